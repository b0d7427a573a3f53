#!/usr/bin/env python3
"""A Flotilla coordinator in miniature, written from docs/wire-protocol.md and schemas/json only.

It drives one real agent through the whole contract and fails (exit 1) on any deviation:
discovery through the NATS service API and the presence subject, a signed migrate of a small
plan (after a read-only preview of it), its progress and result, a signed rollback, and an
unsigned and a forged command, which must be refused. Every message it receives is validated against schemas/json.

    client.py --nats URL --key FILE --service S --instance I [--prefix flotilla]
"""

import argparse
import asyncio
import base64
import datetime
import json
import os
import pathlib
import re
import sys
import time
import uuid

import blake3
import jsonschema
import nacl.signing
import nats

HERE = pathlib.Path(__file__).resolve().parent
SCHEMAS = HERE.parent.parent / "schemas" / "json"
COMMAND_SCHEMA = "flotilla.command.v2"
MICRO_NAME = "flotilla-agent"
# RFC 3339, as written by a conforming peer: UTC with the Z designator.
UTC_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


class Failure(Exception):
    """The agent did not behave as the contract says."""


def b64url_nopad(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uuid7() -> str:
    """A UUIDv7: 48-bit Unix milliseconds, version 7, RFC 4122 variant, random rest."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))


def now_rfc3339(offset_s: float = 0) -> str:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Contract:
    """The schemas of schemas/json, by the value of their `schema` field."""

    def __init__(self, directory: pathlib.Path):
        formats = jsonschema.FormatChecker()

        @formats.checks("date-time")
        def date_time(value):  # noqa: ANN001 - jsonschema's signature
            return not isinstance(value, str) or bool(UTC_DATE_TIME.match(value))

        @formats.checks("uuid")
        def is_uuid(value):  # noqa: ANN001
            return not isinstance(value, str) or str(uuid.UUID(value)) == value

        self.validators = {}
        for path in sorted(directory.glob("*.schema.json")):
            schema = json.loads(path.read_text())
            tag = schema["properties"]["schema"]
            if "$ref" in tag:
                tag = schema["$defs"][tag["$ref"].rsplit("/", 1)[1]]
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            self.validators[tag["const"]] = cls(schema, format_checker=formats)
        self.checked = 0

    def validate(self, body: bytes, expect=None) -> dict:
        """Parses and validates one message; raises Failure when it is not a valid one."""
        try:
            message = json.loads(body)
        except ValueError as e:
            raise Failure(f"not JSON ({e}): {body[:200]!r}")
        tag = message.get("schema") if isinstance(message, dict) else None
        if tag not in self.validators:
            raise Failure(f"message of unknown schema {tag!r}: {body[:200]!r}")
        if expect and tag not in expect:
            raise Failure(f"expected a message of schema {expect}, got {tag}")
        errors = sorted(self.validators[tag].iter_errors(message), key=str)
        if errors:
            details = "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
            raise Failure(f"invalid {tag} message: {details}\n{body[:500]!r}")
        self.checked += 1
        return message


class Signer:
    """Ed25519 over the exact payload bytes; key id = base64url-nopad(BLAKE3(public)[:8])."""

    def __init__(self, seed: bytes):
        self.key = nacl.signing.SigningKey(seed)
        self.key_id = b64url_nopad(blake3.blake3(bytes(self.key.verify_key)).digest()[:8])

    def header(self, payload: bytes, key_id=None) -> str:
        signature = self.key.sign(payload).signature
        return f"{key_id or self.key_id}:{b64url_nopad(signature)}"


class Client:
    def __init__(self, args, contract: Contract, signer: Signer):
        self.args = args
        self.contract = contract
        self.signer = signer
        self.prefix = args.prefix
        self.run_id = uuid7()
        self.events = []  # every event of the run, validated, in arrival order
        self.event_headers = []
        self.invalid = []  # events that failed validation

    def log(self, text: str) -> None:
        print(f"conformance: {text}", flush=True)

    async def gather(self, subject: str, want, seconds: float) -> list:
        """Publishes an empty request with a reply inbox and collects the answers until
        `want(answers)` holds or `seconds` pass."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        await self.nc.publish(subject, b"", reply=inbox)
        answers = []
        deadline = time.monotonic() + seconds
        try:
            while not want(answers):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=left)
                except asyncio.TimeoutError:
                    break
                if msg.headers and msg.headers.get("Status"):
                    continue  # "no responders" and other status messages carry no answer
                answers.append(msg)
        finally:
            await sub.unsubscribe()
        return answers

    async def discover(self) -> dict:
        """Finds the agent through the NATS service API, asks its status endpoint, and checks
        the presence subject too."""
        service, instance = self.args.service, self.args.instance

        def found(infos):
            return any(mine(m) for m in infos)

        def mine(msg):
            # An agent that is still registering answers before its endpoint is listed.
            info = json.loads(msg.data)
            meta = info.get("metadata") or {}
            return (
                meta.get("service") == service
                and meta.get("instance") == instance
                and bool(info.get("endpoints"))
            )

        deadline = time.monotonic() + 30
        infos = []
        while time.monotonic() < deadline and not found(infos):
            infos = await self.gather(f"$SRV.INFO.{MICRO_NAME}", found, 2)
        matching = [json.loads(m.data) for m in infos if mine(m)]
        if not matching:
            seen = [json.loads(m.data) for m in infos]
            raise Failure(f"no {MICRO_NAME} of {service}/{instance} with endpoints answered $SRV.INFO: {seen}")
        info = matching[0]
        if info.get("type") != "io.nats.micro.v1.info_response" or info.get("name") != MICRO_NAME:
            raise Failure(f"unexpected service API info: {info}")
        if COMMAND_SCHEMA not in info["metadata"].get("accepts", "").split(","):
            raise Failure(f"agent does not accept {COMMAND_SCHEMA}: {info['metadata']}")
        expected = f"{self.prefix}.agent.{service}.{instance}.status"
        status = [e for e in info.get("endpoints") or [] if e.get("subject") == expected]
        if not status or status[0].get("name") != expected.replace(".", "-"):
            raise Failure(f"status endpoint is {status}, expected subject {expected}: {info}")
        reply = await self.nc.request(expected, b"", timeout=5)
        presence = self.contract.validate(reply.data, {"flotilla.presence.v1"})
        self.check_presence(presence)

        pings = await self.gather(f"$SRV.PING.{MICRO_NAME}", lambda a: False, 1)
        if not pings:
            raise Failure("no agent answered $SRV.PING")

        answers = await self.gather(
            f"{self.prefix}.presence",
            lambda a: any(json.loads(m.data).get("service") == service for m in a),
            5,
        )
        mine_answers = []
        for msg in answers:
            answer = self.contract.validate(msg.data, {"flotilla.presence.v1"})
            if answer["service"] == service and answer["instance"] == instance:
                mine_answers.append(answer)
        if len(mine_answers) != 1:
            raise Failure(f"{len(mine_answers)} presence answers from {service}/{instance}")
        self.check_presence(mine_answers[0])
        self.log(f"discovered {service}/{instance} v{presence['version']} on {presence['host']}")
        return presence

    def check_presence(self, presence: dict) -> None:
        if (presence["service"], presence["instance"]) != (self.args.service, self.args.instance):
            raise Failure(f"presence of another agent: {presence}")
        if COMMAND_SCHEMA not in presence["accepts"]:
            raise Failure(f"presence does not accept {COMMAND_SCHEMA}: {presence}")

    def command(self, action: dict) -> dict:
        return {
            "schema": COMMAND_SCHEMA,
            "command_id": uuid7(),
            "run_id": self.run_id,
            "service": self.args.service,
            "instance": self.args.instance,
            "issued_at": now_rfc3339(),
            "expires_at": now_rfc3339(300),
            "action": action,
        }

    async def send(self, command: dict, signature="valid") -> None:
        payload = json.dumps(command, separators=(",", ":")).encode()
        headers = {"Nats-Msg-Id": command["command_id"], "Flotilla-Run-Id": self.run_id}
        if signature == "valid":
            headers["Flotilla-Signature"] = self.signer.header(payload)
        elif signature == "forged":
            # Signed by a stranger, under the trusted key's ID.
            stranger = Signer(os.urandom(32))
            headers["Flotilla-Signature"] = stranger.header(payload, self.signer.key_id)
        subject = f"{self.prefix}.command.{command['service']}.{command['instance']}"
        ack = await self.js.publish(subject, payload, headers=headers)
        if ack.duplicate:
            raise Failure(f"the commands stream took {command['command_id']} for a duplicate")
        expected_stream = self.prefix.upper().replace("-", "_") + "_COMMANDS_V2"
        if ack.stream != expected_stream:
            raise Failure(f"command stored in stream {ack.stream}, expected {expected_stream}")

    async def on_event(self, msg) -> None:
        # nats-py swallows what a callback raises: an invalid event is kept, and fails the run
        # at the next look at the events.
        self.event_headers.append((msg.subject, msg.headers or {}))
        try:
            self.events.append(self.contract.validate(msg.data, {"flotilla.progress.v1", "flotilla.result.v1"}))
        except Failure as e:
            self.invalid.append(e)

    def check_valid(self) -> None:
        if self.invalid:
            raise self.invalid[0]

    async def result_of(self, command_id: str, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_valid()
            for event in self.events:
                if event["schema"] == "flotilla.result.v1" and event["command_id"] == command_id:
                    return event
            await asyncio.sleep(0.05)
        raise Failure(f"no result for command {command_id} within {seconds} s")

    def progress_of(self, command_id: str) -> list:
        return [
            (e["phase"], e["status"])
            for e in self.events
            if e["schema"] == "flotilla.progress.v1" and e["command_id"] == command_id
        ]

    def expect(self, result: dict, outcome: str, what: str) -> None:
        if result["outcome"] != outcome:
            raise Failure(f"{what}: outcome {result['outcome']}, expected {outcome}: {result.get('reason')}")
        if (result["run_id"], result["service"], result["instance"]) != (
            self.run_id,
            self.args.service,
            self.args.instance,
        ):
            raise Failure(f"{what}: result addressed wrongly: {result}")
        self.log(f"{what}: {outcome}" + (f" ({result['reason']})" if result.get("reason") else ""))

    async def refused(self, signature: str) -> None:
        command = self.command(self.migrate_action(f"{signature}.txt"))
        await self.send(command, signature)
        result = await self.result_of(command["command_id"], 30)
        self.expect(result, "refused", f"{signature} migrate")
        if self.progress_of(command["command_id"]):
            raise Failure(f"{signature} command made progress: {self.progress_of(command['command_id'])}")

    def migrate_action(self, file: str) -> dict:
        return {
            "kind": "migrate",
            "steps": [
                {
                    "action": "write_file",
                    "path": file,
                    "content": f"written by the conformance client in run {self.run_id}\n",
                }
            ],
        }

    async def run(self) -> None:
        self.nc = await nats.connect(self.args.nats, name="flotilla-conformance")
        self.js = self.nc.jetstream()
        try:
            await self.discover()
            # Results are stored on the run's event subjects; progress travels live, unstored.
            events = f"{self.prefix}.evt.{self.run_id}.>"
            sub = await self.nc.subscribe(events, cb=self.on_event)
            live = await self.nc.subscribe(f"{self.prefix}.live.{self.run_id}.>", cb=self.on_event)

            await self.refused("unsigned")
            await self.refused("forged")

            # A dry run of the same plan first: it foresees the write and changes nothing.
            preview = self.command(dict(self.migrate_action("conformance.txt"), kind="preview"))
            await self.send(preview)
            result = await self.result_of(preview["command_id"], self.args.timeout)
            self.expect(result, "succeeded", "preview")
            steps = (result.get("preview") or {}).get("steps") or []
            if [(p["step"], p["action"]) for p in steps] != [(1, "write_file")]:
                raise Failure(f"preview: expected one write_file step, got {result.get('preview')}")

            migrate = self.command(self.migrate_action("conformance.txt"))
            await self.send(migrate)
            result = await self.result_of(migrate["command_id"], self.args.timeout)
            self.expect(result, "succeeded", "migrate")
            phases = self.progress_of(migrate["command_id"])
            for phase in ["precheck", "backup", "apply", "restart", "validate"]:
                if (phase, "started") not in phases or (phase, "succeeded") not in phases:
                    raise Failure(f"migrate: no started and succeeded progress for {phase}: {phases}")
            if any(p["status"] != "succeeded" for p in result["phases"]):
                raise Failure(f"migrate succeeded with a phase that did not: {result['phases']}")

            rollback = self.command({"kind": "rollback", "migration": migrate["command_id"]})
            await self.send(rollback)
            result = await self.result_of(rollback["command_id"], self.args.timeout)
            self.expect(result, "rolled_back", "rollback")
            if ("rollback", "succeeded") not in self.progress_of(rollback["command_id"]):
                raise Failure(f"rollback: no succeeded rollback progress: {self.progress_of(rollback['command_id'])}")

            await sub.unsubscribe()
            await live.unsubscribe()
            self.check_valid()
            self.check_event_headers()
            await self.check_audit_log()
        finally:
            await self.nc.close()

    def check_event_headers(self) -> None:
        for subject, headers in self.event_headers:
            parts = subject.split(".")
            if parts[0] != self.prefix or parts[1] not in ("evt", "live") or parts[2] != self.run_id or parts[3:] != [
                self.args.service,
                self.args.instance,
            ]:
                raise Failure(f"event on an unexpected subject {subject}")
            if headers.get("Flotilla-Run-Id") != self.run_id:
                raise Failure(f"event on {subject} carries Flotilla-Run-Id {headers.get('Flotilla-Run-Id')!r}")

    async def check_audit_log(self) -> None:
        """The events stream holds every result of the run, each valid, and no progress."""
        stream = self.prefix.upper().replace("-", "_") + "_EVENTS"
        subject = f"{self.prefix}.evt.{self.run_id}.>"
        sub = await self.js.subscribe(subject, stream=stream, ordered_consumer=True)
        stored = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except asyncio.TimeoutError:
                    break
                stored.append(self.contract.validate(msg.data))
        finally:
            await sub.unsubscribe()
        results = [e for e in stored if e["schema"] == "flotilla.result.v1"]
        if len(results) != len(stored):
            raise Failure(f"the events stream {stream} holds progress: it travels live, unstored")
        if len(results) != 5:
            raise Failure(f"the events stream {stream} holds {len(results)} results of the run, expected 5")
        self.log(f"audit log {stream}: {len(stored)} events of the run")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", required=True, help="NATS URL, e.g. nats://127.0.0.1:4222")
    parser.add_argument("--key", required=True, help="the coordinator's signing key file (base64 seed)")
    parser.add_argument("--service", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--prefix", default="flotilla")
    parser.add_argument("--schemas", default=str(SCHEMAS), help="the schemas/json directory")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for a result")
    args = parser.parse_args()

    contract = Contract(pathlib.Path(args.schemas))
    signer = Signer(base64.b64decode(pathlib.Path(args.key).read_text().strip()))
    client = Client(args, contract, signer)
    try:
        await client.run()
    except Failure as e:
        print(f"conformance: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"conformance: passed; {contract.checked} messages validated against {args.schemas}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
