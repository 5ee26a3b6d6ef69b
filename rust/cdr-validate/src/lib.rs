//! A batch of call-ended events, as the raw Kafka values, validated into the `cdr`
//! table's Arrow columns: the ingest hot path.
//!
//! The contract is the pydantic model `cdr.model.event.CallEnded`; this crate is its one
//! fast implementation, held to it by `tests/unit/test_compiled_validation.py` (every
//! message gets the same verdict and, when accepted, the same row). Each message ends in
//! one of three places:
//! - a row of the table (the model would accept it, with exactly these columns);
//! - a refusal naming the field at fault (the model refuses it, naming that field among
//!   its errors; "" for the message as a whole or a rule across fields);
//! - left to the model: a valid or invalid event in a shape taken here only by the model
//!   (integer or unusual timestamps, a naive time where its zone's offset changes, a
//!   non-ASCII status, ...). The caller asks the model for those.
//!
//! Times are microseconds since 1970 UTC until the table stores them, floored, as
//! milliseconds (as pyarrow does with the model's datetimes).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt8Builder};
use arrow_array::ffi::to_ffi;
use arrow_array::{Array, ArrayRef, StructArray};
use arrow_schema::{DataType, Field, Fields, TimeUnit};
use jiter::{JsonValue, JsonValueScratch, PartialMode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyList};

const US: i64 = 1_000_000;
/// 1900-01-01 and 2300-01-01 UTC (cdr.model.event.STORE_MIN, STORE_END) in microseconds.
const STORE_MIN_US: i64 = -2_208_988_800 * US;
const STORE_END_US: i64 = 10_413_792_000 * US;
/// cdr.model.event.DURATION_TOLERANCE_S
const DURATION_TOLERANCE_S: i64 = 2;
/// jiter's nesting limit is the model's too; a message nested near it is left to the
/// model rather than trusting an off-by-one here.
const MAX_DEPTH_TAKEN: usize = 64;

/// How naive times of one zone become UTC here: its one offset over [since, until), both
/// naive local microseconds (cdr.ingest.validation.NaiveTimes). Outside: left to the model.
#[derive(Clone, Copy)]
struct NaiveRule {
    offset_us: i64,
    since_us: i64,
    until_us: i64,
}

/// The fields of the event, in the model's declaration order (`NAMES` spells them).
#[derive(Clone, Copy, PartialEq, Eq)]
enum F {
    Event,
    SchemaVersion,
    TenantId,
    EmittedAt,
    Id,
    SipCallId,
    Cause,
    Duration,
    Billsec,
    Direction,
    RecordingUrl,
    Extension,
    FromNumber,
    ToNumber,
    ReceiveDest,
    TimeStarted,
    TimeAnswered,
    TimeEnded,
    Status,
}

const NAMES: [&str; 19] = [
    "event",
    "schema_version",
    "tenant_id",
    "emitted_at",
    "id",
    "sip_call_id",
    "cause",
    "duration",
    "billsec",
    "direction",
    "recording_url",
    "extension",
    "from_number",
    "to_number",
    "receive_dest",
    "time_started",
    "time_answered",
    "time_ended",
    "status",
];

fn field_of(key: &str) -> Option<F> {
    Some(match key {
        "event" => F::Event,
        "schema_version" => F::SchemaVersion,
        "tenant_id" => F::TenantId,
        "emitted_at" => F::EmittedAt,
        "id" => F::Id,
        "sip_call_id" => F::SipCallId,
        "cause" => F::Cause,
        "duration" => F::Duration,
        "billsec" => F::Billsec,
        "direction" => F::Direction,
        "recording_url" => F::RecordingUrl,
        "extension" => F::Extension,
        "from_number" => F::FromNumber,
        "to_number" => F::ToNumber,
        "receive_dest" => F::ReceiveDest,
        "time_started" => F::TimeStarted,
        "time_answered" => F::TimeAnswered,
        "time_ended" => F::TimeEnded,
        "status" => F::Status,
        _ => return None,
    })
}

fn name_of(field: F) -> &'static str {
    NAMES[field as usize]
}

/// Why a message is not a row: refused (the field at fault, "" for the whole message,
/// and why), or left to the model (why).
enum Verdict {
    Refused(&'static str, String),
    Deferred(String),
}

type Outcome<T> = Result<T, Verdict>;

fn refuse<T>(field: F, why: impl Into<String>) -> Outcome<T> {
    Err(Verdict::Refused(name_of(field), why.into()))
}

fn defer<T>(field: F, why: &str) -> Outcome<T> {
    Err(Verdict::Deferred(format!("{}: {why}", name_of(field))))
}

/// One accepted event's values, borrowed from its parsed message.
struct Row<'a> {
    tenant_id: &'a str,
    id: String,
    sip_call_id: &'a str,
    cause: &'a str,
    duration: u32,
    billsec: u32,
    direction: u8,
    recording_url: &'a str,
    extension: &'a str,
    from_number: &'a str,
    to_number: &'a str,
    receive_dest: &'a str,
    time_started: i64,
    time_answered: Option<i64>,
    time_ended: i64,
    status: String,
    emitted_at: i64,
}

/// The per-batch parameters of the rules: naive times' zones (a default and the listed
/// tenants'), the longest call.
#[pyclass(frozen, module = "cdr_validate")]
struct Rules {
    default: NaiveRule,
    tenants: HashMap<String, NaiveRule>,
    max_call_s: i64,
}

#[pymethods]
impl Rules {
    #[new]
    fn new(default: (i64, i64, i64), tenants: HashMap<String, (i64, i64, i64)>, max_call_s: i64) -> PyResult<Self> {
        if max_call_s < 0 {
            return Err(PyValueError::new_err("max_call_s must not be negative"));
        }
        let rule = |(offset_us, since_us, until_us): (i64, i64, i64)| NaiveRule {
            offset_us,
            since_us,
            until_us,
        };
        Ok(Rules {
            default: rule(default),
            tenants: tenants
                .into_iter()
                .map(|(tenant, parts)| (tenant, rule(parts)))
                .collect(),
            max_call_s,
        })
    }

    /// `values` (a list of bytes) validated with `emitted_at` at most `latest_us`
    /// (microseconds since 1970 UTC): the accepted rows as a record batch (a first column
    /// `n`, each row's index in `values`), the refused `(index, field, reason)`, and the
    /// `(index, reason)` left to the model. The GIL is released while it works.
    #[allow(clippy::type_complexity)]
    fn validate(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyList>,
        latest_us: i64,
    ) -> PyResult<(Columns, Vec<(u32, &'static str, String)>, Vec<(u32, String)>)> {
        // Held (referenced) for the whole call: another thread may change the list while
        // this one runs without the GIL, and the bytes must outlive that.
        let held: Vec<Py<PyBytes>> = values
            .iter()
            .map(|value| value.cast_into::<PyBytes>().map(Bound::unbind))
            .collect::<Result<_, _>>()?;
        if held.len() > u32::MAX as usize {
            return Err(PyValueError::new_err("a batch holds at most 2**32 - 1 messages"));
        }
        let messages: Vec<&[u8]> = held.iter().map(|value| value.as_bytes(py)).collect();
        let (batch, refused, deferred) = py.detach(|| self.batch(&messages, latest_us));
        Ok((Columns { batch }, refused, deferred))
    }
}

/// The accepted rows, handed to pyarrow through the Arrow PyCapsule interface
/// (`pyarrow.record_batch(columns)`).
#[pyclass(frozen, module = "cdr_validate")]
struct Columns {
    batch: StructArray,
}

#[pymethods]
impl Columns {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
        let _ = requested_schema; // the one schema there is; a caster is pyarrow's job
        let (array, schema) = to_ffi(&self.batch.to_data()).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let schema = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
        let array = PyCapsule::new_with_value(py, array, c"arrow_array")?;
        Ok((schema, array))
    }

    fn __len__(&self) -> usize {
        self.batch.len()
    }
}

struct Builders {
    n: UInt32Builder,
    tenant_id: StringBuilder,
    id: StringBuilder,
    sip_call_id: StringBuilder,
    cause: StringBuilder,
    duration: UInt32Builder,
    billsec: UInt32Builder,
    direction: UInt8Builder,
    recording_url: StringBuilder,
    recording_file: StringBuilder,
    extension: StringBuilder,
    from_number: StringBuilder,
    to_number: StringBuilder,
    receive_dest: StringBuilder,
    time_started: TimestampMillisecondBuilder,
    time_answered: TimestampMillisecondBuilder,
    time_ended: TimestampMillisecondBuilder,
    status: StringBuilder,
    emitted_at: TimestampMillisecondBuilder,
}

fn strings(rows: usize, bytes_each: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * bytes_each)
}

fn times(rows: usize) -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC")
}

/// Milliseconds, floored (pyarrow floors a datetime before 1970 too).
fn ms(us: i64) -> i64 {
    us.div_euclid(1000)
}

impl Builders {
    fn new(rows: usize) -> Self {
        Builders {
            n: UInt32Builder::with_capacity(rows),
            tenant_id: strings(rows, 16),
            id: strings(rows, 36),
            sip_call_id: strings(rows, 40),
            cause: strings(rows, 16),
            duration: UInt32Builder::with_capacity(rows),
            billsec: UInt32Builder::with_capacity(rows),
            direction: UInt8Builder::with_capacity(rows),
            recording_url: strings(rows, 48),
            recording_file: strings(rows, 24),
            extension: strings(rows, 4),
            from_number: strings(rows, 12),
            to_number: strings(rows, 12),
            receive_dest: strings(rows, 4),
            time_started: times(rows),
            time_answered: times(rows),
            time_ended: times(rows),
            status: strings(rows, 8),
            emitted_at: times(rows),
        }
    }

    fn push(&mut self, n: u32, row: &Row<'_>) {
        self.n.append_value(n);
        self.tenant_id.append_value(row.tenant_id);
        self.id.append_value(&row.id);
        self.sip_call_id.append_value(row.sip_call_id);
        self.cause.append_value(row.cause);
        self.duration.append_value(row.duration);
        self.billsec.append_value(row.billsec);
        self.direction.append_value(row.direction);
        self.recording_url.append_value(row.recording_url);
        // A URL not in the plain shape: null here, its file name from Python's urlsplit.
        self.recording_file.append_option(recording_file(row.recording_url));
        self.extension.append_value(row.extension);
        self.from_number.append_value(row.from_number);
        self.to_number.append_value(row.to_number);
        self.receive_dest.append_value(row.receive_dest);
        self.time_started.append_value(ms(row.time_started));
        self.time_answered.append_option(row.time_answered.map(ms));
        self.time_ended.append_value(ms(row.time_ended));
        self.status.append_value(&row.status);
        self.emitted_at.append_value(ms(row.emitted_at));
    }

    fn finish(mut self) -> StructArray {
        let time = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let columns: Vec<(&str, DataType, ArrayRef)> = vec![
            ("n", DataType::UInt32, Arc::new(self.n.finish())),
            ("tenant_id", DataType::Utf8, Arc::new(self.tenant_id.finish())),
            ("id", DataType::Utf8, Arc::new(self.id.finish())),
            ("sip_call_id", DataType::Utf8, Arc::new(self.sip_call_id.finish())),
            ("cause", DataType::Utf8, Arc::new(self.cause.finish())),
            ("duration", DataType::UInt32, Arc::new(self.duration.finish())),
            ("billsec", DataType::UInt32, Arc::new(self.billsec.finish())),
            ("direction", DataType::UInt8, Arc::new(self.direction.finish())),
            ("recording_url", DataType::Utf8, Arc::new(self.recording_url.finish())),
            ("recording_file", DataType::Utf8, Arc::new(self.recording_file.finish())),
            ("extension", DataType::Utf8, Arc::new(self.extension.finish())),
            ("from_number", DataType::Utf8, Arc::new(self.from_number.finish())),
            ("to_number", DataType::Utf8, Arc::new(self.to_number.finish())),
            ("receive_dest", DataType::Utf8, Arc::new(self.receive_dest.finish())),
            ("time_started", time(), Arc::new(self.time_started.finish())),
            ("time_answered", time(), Arc::new(self.time_answered.finish())),
            ("time_ended", time(), Arc::new(self.time_ended.finish())),
            ("status", DataType::Utf8, Arc::new(self.status.finish())),
            ("emitted_at", time(), Arc::new(self.emitted_at.finish())),
        ];
        // Nullable, as pyarrow's schema fields are by default: the table concatenates
        // with the model's rows (cdr.ingest.processor.SCHEMA).
        let fields: Fields = columns
            .iter()
            .map(|(name, kind, _)| Field::new(*name, kind.clone(), true))
            .collect();
        let arrays = columns.into_iter().map(|(_, _, array)| array).collect();
        StructArray::new(fields, arrays, None)
    }
}

type Refusals = Vec<(u32, &'static str, String)>;
type Deferrals = Vec<(u32, String)>;

impl Rules {
    fn batch(&self, messages: &[&[u8]], latest_us: i64) -> (StructArray, Refusals, Deferrals) {
        let mut builders = Builders::new(messages.len());
        let mut refused = Vec::new();
        let mut deferred = Vec::new();
        // jiter's buffers, grown once for the batch. Infinity and NaN are taken as the
        // model's validate_json takes them (in fields it ignores; a number field refuses them).
        let mut scratch = JsonValueScratch::new();
        for (n, message) in messages.iter().enumerate() {
            let n = n as u32; // at most u32::MAX messages (checked by the caller)
            match scratch.parse(message, true, PartialMode::Off) {
                Err(error) => refused.push((n, "", format!("not JSON: {error}"))),
                Ok(JsonValue::Object(object)) => match self.event(&object, latest_us) {
                    Ok(row) => builders.push(n, &row),
                    Err(Verdict::Refused(field, why)) => refused.push((n, field, why)),
                    Err(Verdict::Deferred(why)) => deferred.push((n, why)),
                },
                Ok(_) => refused.push((n, "", "not a JSON object".to_owned())),
            }
        }
        (builders.finish(), refused, deferred)
    }

    /// One event's row, or why not. Every field is looked at before the verdict: a field
    /// the model surely refuses outranks one left to it (the model names every bad field).
    fn event<'a>(&self, object: &'a [(Cow<'a, str>, JsonValue<'a>)], latest_us: i64) -> Outcome<Row<'a>> {
        let mut slots: [Option<&'a JsonValue<'a>>; 19] = [None; 19];
        for (key, value) in object {
            if let Some(field) = field_of(key) {
                slots[field as usize] = Some(value); // a repeated key: the last wins, as in the model
            } else if depth(value) > MAX_DEPTH_TAKEN {
                return Err(Verdict::Deferred(format!(
                    "{key}: nested deeper than {MAX_DEPTH_TAKEN}"
                )));
            }
        }
        let get = |field: F| slots[field as usize];
        let mut first_deferral: Option<Verdict> = None;
        macro_rules! take {
            ($check:expr) => {
                match $check {
                    Ok(value) => Some(value),
                    Err(refusal @ Verdict::Refused(..)) => return Err(refusal),
                    Err(deferral) => {
                        first_deferral.get_or_insert(deferral);
                        None
                    }
                }
            };
        }
        take!(literal_event(get(F::Event)));
        take!(literal_one(get(F::SchemaVersion)));
        let tenant_id = take!(tenant(get(F::TenantId)));
        // The model reads a naive time in the zone of a tenant_id it accepted, else the default.
        let rule = tenant_id.and_then(|t| self.tenants.get(t)).unwrap_or(&self.default);
        let emitted_at = take!(time(F::EmittedAt, get(F::EmittedAt), rule, false));
        let id = take!(uuid(get(F::Id)));
        let sip_call_id = take!(text(F::SipCallId, get(F::SipCallId), 0, 1024));
        let cause = take!(text(F::Cause, get(F::Cause), 0, 128));
        let duration = take!(seconds(F::Duration, get(F::Duration)));
        let billsec = take!(seconds(F::Billsec, get(F::Billsec)));
        let direction = take!(direction(get(F::Direction)));
        let recording_url = take!(optional_text(F::RecordingUrl, get(F::RecordingUrl), 4096));
        let extension = take!(optional_text(F::Extension, get(F::Extension), 128));
        let from_number = take!(text(F::FromNumber, get(F::FromNumber), 0, 128));
        let to_number = take!(text(F::ToNumber, get(F::ToNumber), 0, 128));
        let receive_dest = take!(optional_text(F::ReceiveDest, get(F::ReceiveDest), 256));
        let time_started = take!(time(F::TimeStarted, get(F::TimeStarted), rule, false));
        let time_answered = take!(time(F::TimeAnswered, get(F::TimeAnswered), rule, true));
        let time_ended = take!(time(F::TimeEnded, get(F::TimeEnded), rule, false));
        let status = take!(status(get(F::Status)));
        if let Some(deferral) = first_deferral {
            return Err(deferral);
        }
        // Every field is valid (each `take!` gave a value): the model's rules across fields.
        let (Some(tenant_id), Some(Some(emitted_at)), Some(id), Some(sip_call_id), Some(cause)) =
            (tenant_id, emitted_at, id, sip_call_id, cause)
        else {
            unreachable!("no deferral, so every field has its value")
        };
        let (Some(duration), Some(billsec), Some(direction), Some(recording_url), Some(extension)) =
            (duration, billsec, direction, recording_url, extension)
        else {
            unreachable!("no deferral, so every field has its value")
        };
        let (Some(from_number), Some(to_number), Some(receive_dest), Some(Some(started)), Some(answered)) =
            (from_number, to_number, receive_dest, time_started, time_answered)
        else {
            unreachable!("no deferral, so every field has its value")
        };
        let (Some(Some(ended)), Some(status)) = (time_ended, status) else {
            unreachable!("no deferral, so every field has its value")
        };
        let whole = |why: String| Err(Verdict::Refused("", why));
        if emitted_at > latest_us {
            return whole("emitted_at is later than now + the allowed clock skew".to_owned());
        }
        if billsec > duration {
            return whole(format!("billsec ({billsec}) exceeds duration ({duration})"));
        }
        if ended < started {
            return whole("time_ended is before time_started".to_owned());
        }
        if let Some(answered) = answered {
            if !(started <= answered && answered <= ended) {
                return whole("time_answered is not between time_started and time_ended".to_owned());
            }
        }
        let span = ended - started;
        if span > self.max_call_s * US {
            return whole(format!(
                "time_ended - time_started is longer than a call may last ({} s)",
                self.max_call_s
            ));
        }
        if i64::from(duration) > self.max_call_s {
            return whole(format!(
                "duration ({duration}) is longer than a call may last ({} s)",
                self.max_call_s
            ));
        }
        if span > (i64::from(duration) + DURATION_TOLERANCE_S) * US {
            return whole(format!(
                "duration ({duration}) is shorter than time_ended - time_started by more than 2 s"
            ));
        }
        Ok(Row {
            tenant_id,
            id,
            sip_call_id,
            cause,
            duration,
            billsec,
            direction,
            recording_url: recording_url.unwrap_or(""),
            extension: extension.unwrap_or(""),
            from_number,
            to_number,
            receive_dest: receive_dest.unwrap_or(""),
            time_started: started,
            time_answered: answered,
            time_ended: ended,
            status,
            emitted_at,
        })
    }
}

/// How deep a value nests (a scalar: 0).
fn depth(value: &JsonValue<'_>) -> usize {
    match value {
        JsonValue::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        JsonValue::Object(pairs) => 1 + pairs.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
        _ => 0,
    }
}

fn required<'a>(field: F, value: Option<&'a JsonValue<'a>>) -> Outcome<&'a JsonValue<'a>> {
    value.map_or_else(|| refuse(field, "Field required"), Ok)
}

fn literal_event(value: Option<&JsonValue<'_>>) -> Outcome<()> {
    match required(F::Event, value)? {
        JsonValue::Str(s) if s == "call.ended" => Ok(()),
        _ => refuse(F::Event, "Input should be 'call.ended'"),
    }
}

fn literal_one(value: Option<&JsonValue<'_>>) -> Outcome<()> {
    match required(F::SchemaVersion, value)? {
        JsonValue::Int(1) => Ok(()),
        // The model's literal may take these in lax mode (1.0, "1", true): its call.
        JsonValue::Float(_) | JsonValue::Str(_) | JsonValue::Bool(_) => defer(F::SchemaVersion, "not the integer 1"),
        _ => refuse(F::SchemaVersion, "Input should be 1"),
    }
}

/// A StrictStr of `min..=max` characters (code points, as Python counts them).
fn text<'a>(field: F, value: Option<&'a JsonValue<'a>>, min: usize, max: usize) -> Outcome<&'a str> {
    match required(field, value)? {
        JsonValue::Str(s) => {
            let length = s.chars().count();
            if length < min || length > max {
                return refuse(field, format!("should have {min} to {max} characters, has {length}"));
            }
            Ok(&**s)
        }
        _ => refuse(field, "Input should be a valid string"),
    }
}

/// An optional StrictStr (null or absent: None).
fn optional_text<'a>(field: F, value: Option<&'a JsonValue<'a>>, max: usize) -> Outcome<Option<&'a str>> {
    match value {
        None | Some(JsonValue::Null) => Ok(None),
        Some(_) => text(field, value, 0, max).map(Some),
    }
}

fn tenant<'a>(value: Option<&'a JsonValue<'a>>) -> Outcome<&'a str> {
    let s = text(F::TenantId, value, 1, 128)?;
    // cdr.model.event.TENANT_PATTERN: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$
    let bytes = s.as_bytes();
    let ok = bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return refuse(F::TenantId, "should match the tenant pattern");
    }
    Ok(s)
}

/// A StrictInt in 0..=4294967295.
fn seconds(field: F, value: Option<&JsonValue<'_>>) -> Outcome<u32> {
    match required(field, value)? {
        JsonValue::Int(i) => u32::try_from(*i).or_else(|_| refuse(field, "should be 0 to 4294967295")),
        JsonValue::BigInt(_) => refuse(field, "should be 0 to 4294967295"),
        _ => refuse(field, "Input should be a valid integer"),
    }
}

fn direction(value: Option<&JsonValue<'_>>) -> Outcome<u8> {
    // The model lower-cases a string before its literal: only ASCII letters lower-case to
    // these words' letters, so an ASCII case-insensitive match is the same test.
    if let JsonValue::Str(s) = required(F::Direction, value)? {
        for (word, code) in [("inbound", 1), ("outbound", 2), ("local", 3)] {
            if s.eq_ignore_ascii_case(word) {
                return Ok(code);
            }
        }
    }
    refuse(F::Direction, "Input should be 'inbound', 'outbound' or 'local'")
}

/// str.isspace: Unicode White_Space, and the four ASCII separators Python adds.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn status(value: Option<&JsonValue<'_>>) -> Outcome<String> {
    let s = text(F::Status, value, 1, 64)?;
    let stripped = s.trim_matches(python_space);
    // Upper case beyond ASCII depends on the Unicode version (Python's and Rust's differ).
    if !stripped.is_ascii() {
        return defer(F::Status, "not ASCII");
    }
    Ok(stripped.to_ascii_uppercase())
}

fn uuid(value: Option<&JsonValue<'_>>) -> Outcome<String> {
    let JsonValue::Str(s) = required(F::Id, value)? else {
        return refuse(F::Id, "UUID input should be a string");
    };
    let b = s.as_bytes();
    let hex = |part: &[u8]| part.iter().all(u8::is_ascii_hexdigit);
    let digits: Option<Vec<u8>> = match b.len() {
        36 if [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
            && [&b[0..8], &b[9..13], &b[14..18], &b[19..23], &b[24..36]]
                .iter()
                .all(|p| hex(p)) =>
        {
            Some([&b[0..8], &b[9..13], &b[14..18], &b[19..23], &b[24..36]].concat())
        }
        32 if hex(b) => Some(b.to_vec()),
        _ => None,
    };
    let Some(digits) = digits else {
        // The braced and URN spellings the model's parser also takes.
        return defer(F::Id, "not a plain UUID spelling");
    };
    let lower = String::from_utf8(digits.to_ascii_lowercase()).expect("hex digits are ASCII");
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &lower[0..8],
        &lower[8..12],
        &lower[12..16],
        &lower[16..20],
        &lower[20..32]
    ))
}

/// A timestamp as microseconds since 1970 UTC (None: null, for an optional one). Taken
/// here: `YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|±HH:MM]`; every other form is the model's.
fn time(field: F, value: Option<&JsonValue<'_>>, rule: &NaiveRule, optional: bool) -> Outcome<Option<i64>> {
    let s = match value {
        None if optional => return Ok(None),
        Some(JsonValue::Null) if optional => return Ok(None),
        None => return refuse(field, "Field required"),
        Some(JsonValue::Null | JsonValue::Array(_) | JsonValue::Object(_)) => {
            return refuse(field, "Input should be a valid datetime")
        }
        Some(JsonValue::Str(s)) => s,
        Some(_) => return defer(field, "a number (Unix time)"),
    };
    let Some((local_us, offset_s)) = stamp(s.as_bytes()) else {
        return defer(field, "not in the one shape taken here");
    };
    let utc = match offset_s {
        Some(offset) => local_us - offset * US,
        None if (rule.since_us..rule.until_us).contains(&local_us) => local_us - rule.offset_us,
        None => return defer(field, "a naive time where its zone's offset changes"),
    };
    if !(STORE_MIN_US..STORE_END_US).contains(&utc) {
        return refuse(field, "is outside 1900-01-01 to 2299-12-31 UTC");
    }
    Ok(Some(utc))
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|±HH:MM]`: local microseconds since 1970 and the
/// offset in seconds (None: naive). Any other text, or a date the calendar lacks: None.
fn stamp(b: &[u8]) -> Option<(i64, Option<i64>)> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let length = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=6).contains(&length) {
            return None;
        }
        micros = digits(&fraction[..length])? * 10i64.pow(6 - length as u32);
        rest = &fraction[length..];
    }
    let offset = match rest {
        [] => None,
        [b'Z'] => Some(0),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = h * 3600 + m * 60;
            Some(if *sign == b'-' { -seconds } else { seconds })
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some((
        (days * 86_400 + hour * 3600 + minute * 60 + second) * US + micros,
        offset,
    ))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// cdr.ingest.processor.recording_file for a URL of its plain shape (a scheme, "://",
/// then printable ASCII less "#", "?", "[" and "]"): the last segment of the path after
/// the host, trailing slashes dropped. None for any other URL (urlsplit's, in Python).
fn recording_file(url: &str) -> Option<&str> {
    if url.is_empty() {
        return Some("");
    }
    let b = url.as_bytes();
    let scheme = 1 + b[1..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
        .count();
    if !b[0].is_ascii_alphabetic() || !b[scheme..].starts_with(b"://") {
        return None;
    }
    let after = &url[scheme + 3..];
    if !after
        .bytes()
        .all(|c| (b'!'..=b'~').contains(&c) && !matches!(c, b'#' | b'?' | b'[' | b']'))
    {
        return None;
    }
    let Some(slash) = after.find('/') else { return Some("") };
    let path = after[slash..].trim_end_matches('/');
    Some(path.rsplit('/').next().unwrap_or(""))
}

#[pymodule]
fn cdr_validate(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Rules>()?;
    module.add_class::<Columns>()?;
    Ok(())
}
