//! The HTML report of a run: its record plus its events, read back from the events stream.

use flotilla_schemas::subjects::Subjects;
use flotilla_telemetry::error_chain;

use super::fail;
use crate::cli::{Cli, ReportFiles};
use crate::exit::{self, CommandError};
use crate::report::RunReport;
use crate::store::RunRecord;

/// The page for `record`. Without its events (expired from the stream, or unreadable) the
/// timeline is drawn from the phases the results carry.
pub(super) async fn render(
    cli: &Cli,
    client: &async_nats::Client,
    subjects: &Subjects,
    record: &RunRecord,
) -> String {
    let events = match crate::events::read_all(client, subjects, record).await {
        Ok(events) => events,
        Err(e) => {
            eprintln!(
                "warning: {}; the timeline shows the recorded phases only",
                error_chain(&e)
            );
            Vec::new()
        }
    };
    let trace_url = cli.settings.report.trace_url.as_deref();
    RunReport::from_record(record).to_html(record, &events, trace_url)
}

/// Writes `--report-html FILE`, if asked.
pub(super) async fn write_file(
    cli: &Cli,
    client: &async_nats::Client,
    record: &RunRecord,
    files: &ReportFiles,
) -> Result<(), CommandError> {
    let Some(path) = &files.report_html else {
        return Ok(());
    };
    let subjects = match Subjects::new(&cli.settings.nats.prefix) {
        Ok(subjects) => subjects,
        Err(e) => return Err(fail(exit::USAGE, format!("--prefix: {e}"))),
    };
    let page = render(cli, client, &subjects, record).await;
    match std::fs::write(path, page) {
        Ok(()) => Ok(()),
        Err(e) => Err(fail(
            exit::FAILED,
            format!("cannot write {}: {e}", path.display()),
        )),
    }
}
