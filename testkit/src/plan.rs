//! Plans for tests: a builder for the plan's TOML, and the standard pieces the tests share.

use std::fmt;

use crate::{ROLES, repo_root};

/// A plan's TOML text, built piece by piece: top-level keys first, then the waves, the services
/// and any further tables, in the order TOML wants them. Shown with `{}` (or passed to
/// [`crate::Fleet::migrate`]) it is the plan's text.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    head: String,
    waves: String,
    services: String,
    tail: String,
}

impl Plan {
    /// A plan named `name`, with nothing in it yet.
    pub fn new(name: &str) -> Self {
        Self::default().set("name", name)
    }

    /// A top-level string key, e.g. `set("command_timeout", "30s")`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.head.push_str(&format!("{key} = {}\n", quote(value)));
        self
    }

    /// Top-level keys written as they are (e.g. `max_failures = 1`).
    pub fn raw(mut self, toml: &str) -> Self {
        push_lines(&mut self.head, toml);
        self
    }

    /// A `[[wave]]` of `services` (none: the wave takes the services no earlier wave named).
    pub fn wave(mut self, name: &str, services: &[&str]) -> Self {
        self.waves
            .push_str(&format!("[[wave]]\nname = {}\n", quote(name)));
        if !services.is_empty() {
            let list: Vec<String> = services.iter().map(|s| quote(s)).collect();
            self.waves
                .push_str(&format!("services = [{}]\n", list.join(", ")));
        }
        self
    }

    /// The last wave's `pause` (`"2s"`, `"manual"`): what the run does after it succeeded.
    pub fn pause(mut self, pause: &str) -> Self {
        self.waves.push_str(&format!("pause = {}\n", quote(pause)));
        self
    }

    /// A `[[service]]`: a [`Service`], or its TOML text as it is.
    pub fn service(mut self, service: impl fmt::Display) -> Self {
        push_lines(&mut self.services, &service.to_string());
        self
    }

    /// Tables after the services, written as they are (e.g. `[[check]]` or `[correlation]`).
    pub fn table(mut self, toml: &str) -> Self {
        push_lines(&mut self.tail, toml);
        self
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}{}",
            self.head, self.waves, self.services, self.tail
        )
    }
}

/// One `[[service]]` of a plan, with its steps and health checks in the order they are added.
#[derive(Clone, Debug)]
pub struct Service {
    text: String,
}

impl Service {
    /// The service `name`, with no step yet.
    pub fn new(name: &str) -> Self {
        Self {
            text: format!("[[service]]\nname = {}\n", quote(name)),
        }
    }

    /// A `run_command` step.
    pub fn run(self, program: &str, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        self.step(&format!(
            "action = \"run_command\"\nprogram = {}\nargs = [{}]",
            quote(program),
            args.join(", ")
        ))
    }

    /// A `run_command` step that runs `script` with `sh -c`.
    pub fn sh(self, script: &str) -> Self {
        self.run("sh", &["-c", script])
    }

    /// A `write_file` step.
    pub fn write_file(self, path: &str, content: &str) -> Self {
        self.step(&format!(
            "action = \"write_file\"\npath = {}\ncontent = {}",
            quote(path),
            quote(content)
        ))
    }

    /// A `replace_text` step.
    pub fn replace_text(self, path: &str, find: &str, replace: &str) -> Self {
        self.step(&format!(
            "action = \"replace_text\"\npath = {}\nfind = {}\nreplace = {}",
            quote(path),
            quote(find),
            quote(replace)
        ))
    }

    /// A `delete` step.
    pub fn delete(self, path: &str) -> Self {
        self.step(&format!("action = \"delete\"\npath = {}", quote(path)))
    }

    /// A `[[service.step]]` with `fields` (its TOML keys) as they are.
    pub fn step(mut self, fields: &str) -> Self {
        self.text.push_str("[[service.step]]\n");
        push_lines(&mut self.text, fields);
        self
    }

    /// The health check, given up after `timeout_ms` (`[[service.health]]`).
    pub fn health_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.text
            .push_str(&format!("[[service.health]]\ntimeout_ms = {timeout_ms}\n"));
        self
    }

    /// TOML appended as it is (e.g. a step from [`standard_config_step`]).
    pub fn raw(mut self, toml: &str) -> Self {
        push_lines(&mut self.text, toml);
        self
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A TOML basic string: JSON's string escapes are a subset of TOML's.
fn quote(value: &str) -> String {
    serde_json::to_string(value).expect("a string serializes")
}

fn push_lines(text: &mut String, toml: &str) {
    text.push_str(toml);
    if !toml.ends_with('\n') {
        text.push('\n');
    }
}

/// A plan's `[[service.step]]` that writes `role`'s configuration in the standard layout (T006's
/// unified `config/service.toml`), with `behaviour` appended as its `[behaviour]` table when not
/// empty (the sample service's test knobs, e.g. `fail_health = true`).
pub fn standard_config_step(role: &str, behaviour: &str) -> String {
    let behaviour = if behaviour.is_empty() {
        String::new()
    } else {
        format!("[behaviour]\n{behaviour}\n")
    };
    format!(
        r#"[[service.step]]
action = "write_file"
path = "config/service.toml"
content = """
[service]
name = "{role}"
environment = "demo"
[server]
host = "127.0.0.1"
port = ${{var:port}}
[logging]
format = "json"
level = "info"
file = "${{var:log_file}}"
{behaviour}"""
"#
    )
}

/// The demo plan (`deploy/demo/plan.toml`: the T006 migration, with its cross-service checks)
/// cut down to the services of `roles`.
pub fn demo_plan_text(roles: &[&str]) -> String {
    let mut text = std::fs::read_to_string(repo_root().join("deploy/demo/plan.toml"))
        .expect("the demo plan is readable");
    for role in ROLES.iter().filter(|r| !roles.contains(r)) {
        text = text.replace(&format!("[[service]]\nname = \"{role}\"\n"), "");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_plan_is_the_toml_it_says() {
        let plan = Plan::new("canary \"breaks\"")
            .set("command_timeout", "30s")
            .wave("canary", &["inference"])
            .wave("rest", &[])
            .service(
                Service::new("inference")
                    .sh("echo x >> counter.txt")
                    .replace_text("legacy.conf", "a=1", "a=2\n")
                    .health_timeout_ms(1500),
            )
            .to_string();
        assert_eq!(
            plan,
            "name = \"canary \\\"breaks\\\"\"\ncommand_timeout = \"30s\"\n\
             [[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n\
             [[service]]\nname = \"inference\"\n\
             [[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"echo x >> counter.txt\"]\n\
             [[service.step]]\naction = \"replace_text\"\npath = \"legacy.conf\"\nfind = \"a=1\"\nreplace = \"a=2\\n\"\n\
             [[service.health]]\ntimeout_ms = 1500\n"
        );
    }
}
