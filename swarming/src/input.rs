//! Reading a call's body: one of Swarming's request messages in the proto3
//! JSON mapping. A field may come under its proto name or its lowerCamelCase
//! name, `null` means "not given", integers may be numbers or strings, enums
//! names or numbers. Anything else (an unknown field, a wrong type, a value
//! out of range) refuses the call with `INVALID_ARGUMENT`, naming the field
//! (by its proto name) and what is allowed.

use apiary_protocol::StringPair;
use apiary_protocol::ids::parse_task_id;
use serde_json::Value;

use crate::new_task::{describe, lower_camel};
use crate::time::parse_rfc3339;
use crate::{ApiError, GrpcCode};

/// A request message's fields, under their proto names.
pub(crate) struct Message<'v> {
    fields: Vec<(&'static str, &'v Value)>,
}

/// An enum's values: name and number, as the `.proto` file gives them.
pub(crate) type EnumValues = [(&'static str, i64)];

pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError { code: GrpcCode::InvalidArgument, message: format!("{field}: {message}") }
}

impl<'v> Message<'v> {
    /// The fields of `body` (`null`: an empty message), which must be among
    /// `known`, the fields of the message `name` (in full: `swarming.v2.BotRequest`).
    pub(crate) fn read(body: &'v Value, name: &str, known: &[&'static str]) -> Result<Message<'v>, ApiError> {
        let object = match body {
            Value::Null => return Ok(Message { fields: Vec::new() }),
            Value::Object(object) => object,
            other => {
                let message = format!("the body must be a JSON object ({name}), got {}", describe(other));
                return Err(ApiError { code: GrpcCode::InvalidArgument, message });
            }
        };
        let mut fields = Vec::with_capacity(object.len());
        for (key, value) in object {
            let Some(&field) = known.iter().find(|field| **field == key || lower_camel(field) == *key) else {
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                return Err(invalid(key, format!("is not a field of {name} (its fields: {known})")));
            };
            if fields.iter().any(|(seen, _)| *seen == field) {
                return Err(invalid(field, format!("is given twice (`{field}` and `{}`)", lower_camel(field))));
            }
            if !value.is_null() {
                fields.push((field, value));
            }
        }
        Ok(Message { fields })
    }

    fn get(&self, field: &str) -> Option<&'v Value> {
        self.fields.iter().find(|(name, _)| *name == field).map(|(_, value)| *value)
    }

    /// A string field; "" when not given.
    pub(crate) fn string(&self, field: &str) -> Result<String, ApiError> {
        match self.get(field) {
            None => Ok(String::new()),
            Some(value) => string_of(value, field),
        }
    }

    /// A string field that must be given.
    pub(crate) fn required_string(&self, field: &str) -> Result<String, ApiError> {
        let text = self.string(field)?;
        if text.is_empty() {
            return Err(invalid(field, "is required"));
        }
        Ok(text)
    }

    pub(crate) fn bool(&self, field: &str) -> Result<bool, ApiError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(invalid(field, format!("expected true or false, got {}", describe(other)))),
        }
    }

    /// An integer field in `0..=max`; 0 when not given.
    pub(crate) fn count(&self, field: &str, max: u64) -> Result<u64, ApiError> {
        let Some(value) = self.get(field) else { return Ok(0) };
        let number = integer_of(value, field)?;
        if number < 0 {
            return Err(invalid(field, format!("{number} is negative")));
        }
        if number as u64 > max {
            return Err(invalid(field, format!("{number} is over the limit of {max}")));
        }
        Ok(number as u64)
    }

    pub(crate) fn strings(&self, field: &str) -> Result<Vec<String>, ApiError> {
        let Some(value) = self.get(field) else { return Ok(Vec::new()) };
        list_of(value, field)?
            .iter()
            .enumerate()
            .map(|(index, item)| string_of(item, &format!("{field}[{index}]")))
            .collect()
    }

    /// A `google.protobuf.Timestamp` as Unix milliseconds, when given.
    pub(crate) fn timestamp(&self, field: &str) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.get(field) else { return Ok(None) };
        let text = string_of(value, field)?;
        parse_rfc3339(&text).map(Some).map_err(|reason| invalid(field, reason))
    }

    /// An enum field's number, by name or number; the first value's (0) when
    /// not given.
    pub(crate) fn enumeration(&self, field: &str, values: &EnumValues) -> Result<i64, ApiError> {
        let Some(value) = self.get(field) else { return Ok(0) };
        let found = match value {
            Value::String(name) => values.iter().find(|(known, _)| known == name),
            Value::Number(number) => number.as_i64().and_then(|number| values.iter().find(|(_, n)| *n == number)),
            _ => None,
        };
        let names: Vec<&str> = values.iter().map(|(name, _)| *name).collect();
        found
            .map(|(_, number)| *number)
            .ok_or_else(|| invalid(field, format!("{} is not one of {}", describe(value), names.join(", "))))
    }

    /// A repeated `StringPair` (`[{"key": .., "value": ..}]`).
    pub(crate) fn string_pairs(&self, field: &str) -> Result<Vec<StringPair>, ApiError> {
        let Some(value) = self.get(field) else { return Ok(Vec::new()) };
        let mut pairs = Vec::new();
        for (index, item) in list_of(value, field)?.iter().enumerate() {
            let at = format!("{field}[{index}]");
            let pair =
                Message::read(item, "swarming.v2.StringPair", &["key", "value"]).map_err(|error| nested(&at, error))?;
            pairs.push(StringPair {
                key: pair.string("key").map_err(|error| nested(&at, error))?,
                value: pair.string("value").map_err(|error| nested(&at, error))?,
            });
        }
        Ok(pairs)
    }

    /// A page's cursor, as `render::cursor` wrote it; `None` when not given.
    pub(crate) fn cursor(&self, field: &str) -> Result<Option<u64>, ApiError> {
        let text = self.string(field)?;
        if text.is_empty() {
            return Ok(None);
        }
        let valid = text.len() <= 16 && text.bytes().all(|byte| byte.is_ascii_hexdigit());
        let position = valid.then(|| u64::from_str_radix(&text, 16).ok()).flatten();
        position.map(Some).ok_or_else(|| invalid(field, format!("{text:?} is not a cursor this server gave")))
    }

    /// A task id field that must be given: a request id or a run id.
    pub(crate) fn task_id(&self, field: &str) -> Result<u64, ApiError> {
        let text = self.required_string(field)?;
        task_id_of(&text, field)
    }
}

/// A task id in its text form, refused by the field it came in.
pub(crate) fn task_id_of(text: &str, field: &str) -> Result<u64, ApiError> {
    parse_task_id(text).map_err(|_| invalid(field, format!("{text:?} is not a task id (16 hexadecimal digits)")))
}

/// An error inside a nested message, with the path to it.
fn nested(at: &str, error: ApiError) -> ApiError {
    ApiError { code: error.code, message: format!("{at}.{}", error.message) }
}

fn string_of(value: &Value, field: &str) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(invalid(field, format!("expected a string, got {}", describe(other)))),
    }
}

fn list_of<'v>(value: &'v Value, field: &str) -> Result<&'v Vec<Value>, ApiError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(invalid(field, format!("expected a list, got {}", describe(other)))),
    }
}

fn integer_of(value: &Value, field: &str) -> Result<i64, ApiError> {
    int64_of(value).map_err(|reason| invalid(field, reason))
}

/// The largest integer a JSON number (a double) holds exactly: 2^53.
const MAX_EXACT_JSON_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A 64-bit integer as proto3 JSON writes one: a number without a fraction,
/// or a string of digits; else why the value is not one.
pub(crate) fn int64_of(value: &Value) -> Result<i64, String> {
    let number = match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            let float = number.as_f64().filter(|float| float.fract() == 0.0 && float.abs() <= MAX_EXACT_JSON_INTEGER);
            float.map(|float| float as i64)
        }),
        Value::String(text) => text.parse::<i64>().ok(),
        _ => None,
    };
    number.ok_or_else(|| match looks_integral(value) {
        true => format!(
            "{} is out of range: a 64-bit integer, given as a string of digits or as a JSON number up to 2^53",
            describe(value)
        ),
        false => format!("expected an integer (a number, or a string of digits), got {}", describe(value)),
    })
}

/// Whether the value is written as an integer, whatever its size.
fn looks_integral(value: &Value) -> bool {
    match value {
        Value::Number(number) => number.as_u64().is_some() || number.as_f64().is_some_and(|float| float.fract() == 0.0),
        Value::String(text) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const FIELDS: &[&str] = &["task_id", "limit", "tags", "start", "state", "dimensions", "kill_running"];
    const STATES: &EnumValues = &[("QUERY_PENDING", 0), ("QUERY_RUNNING", 1), ("QUERY_ALL", 10)];

    fn message(body: &Value) -> Message<'_> {
        Message::read(body, "swarming.v2.Test", FIELDS).unwrap()
    }

    fn refusal(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let error = result.expect_err("should be refused");
        assert_eq!(error.code, GrpcCode::InvalidArgument);
        error.message
    }

    #[test]
    fn both_spellings_numbers_as_strings_and_enums_by_name_or_number() {
        let snake = json!({"task_id": "0123456789abcdef", "limit": "20", "kill_running": true, "state": "QUERY_ALL"});
        let camel = json!({"taskId": "0123456789abcdef", "limit": 20, "killRunning": true, "state": 10});
        for body in [snake, camel] {
            let message = message(&body);
            assert_eq!(message.task_id("task_id").unwrap(), 0x0123_4567_89ab_cdef);
            assert_eq!(message.count("limit", 1000).unwrap(), 20);
            assert!(message.bool("kill_running").unwrap());
            assert_eq!(message.enumeration("state", STATES).unwrap(), 10);
        }
        let empty = message(&Value::Null);
        assert_eq!(empty.enumeration("state", STATES).unwrap(), 0);
        assert_eq!((empty.count("limit", 5).unwrap(), empty.bool("kill_running").unwrap()), (0, false));
        assert_eq!(empty.timestamp("start").unwrap(), None);
    }

    #[test]
    fn refusals_name_the_field_and_what_is_allowed() {
        let body = json!({"limit": 1001, "tags": ["a:b", 3], "start": "yesterday", "state": "QUERY_SOON",
                          "dimensions": [{"key": "pool", "valu": "x"}], "task_id": "zz"});
        let message = message(&body);
        assert_eq!(refusal(message.count("limit", 1000)), "limit: 1001 is over the limit of 1000");
        assert_eq!(refusal(message.strings("tags")), "tags[1]: expected a string, got the number 3");
        assert!(refusal(message.timestamp("start")).starts_with("start: \"yesterday\" is not a time in RFC 3339"));
        assert_eq!(
            refusal(message.enumeration("state", STATES)),
            "state: the string \"QUERY_SOON\" is not one of QUERY_PENDING, QUERY_RUNNING, QUERY_ALL"
        );
        assert_eq!(
            refusal(message.string_pairs("dimensions")),
            "dimensions[0].valu: is not a field of swarming.v2.StringPair (its fields: key, value)"
        );
        assert_eq!(refusal(message.task_id("task_id")), "task_id: \"zz\" is not a task id (16 hexadecimal digits)");
        assert_eq!(
            refusal(Message::read(&json!({}), "swarming.v2.Test", FIELDS).unwrap().task_id("task_id")),
            "task_id: is required"
        );
        assert_eq!(
            refusal(message.count("tags", 3)),
            "tags: expected an integer (a number, or a string of digits), got a list"
        );
    }

    #[test]
    fn integers_past_64_bits_or_past_exact_json_numbers_are_refused_as_out_of_range() {
        let body = json!({"limit": "9223372036854775808", "start": 18446744073709551615u64, "state": 1e300});
        let message = message(&body);
        for field in ["limit", "start", "state"] {
            let text = refusal(message.count(field, u64::MAX));
            let reason =
                "is out of range: a 64-bit integer, given as a string of digits or as a JSON number up to 2^53";
            assert!(text.starts_with(&format!("{field}: ")) && text.ends_with(reason), "{text}");
        }
        assert_eq!(int64_of(&json!("9223372036854775807")), Ok(i64::MAX));
        assert_eq!(int64_of(&json!(9007199254740992.0)), Ok(1 << 53));
        assert!(int64_of(&json!("12a")).unwrap_err().starts_with("expected an integer"));
        assert!(int64_of(&json!(1.5)).unwrap_err().starts_with("expected an integer"));
    }

    #[test]
    fn unknown_and_doubled_fields_and_bodies_that_are_not_objects_are_refused() {
        assert_eq!(
            refusal(Message::read(&json!({"bogus": 1}), "swarming.v2.Test", &["limit"]).map(|_| ())),
            "bogus: is not a field of swarming.v2.Test (its fields: limit)"
        );
        assert_eq!(
            refusal(Message::read(&json!({"task_id": "a", "taskId": "b"}), "swarming.v2.Test", FIELDS).map(|_| ())),
            "task_id: is given twice (`task_id` and `taskId`)"
        );
        assert_eq!(
            refusal(Message::read(&json!([1]), "swarming.v2.Test", FIELDS).map(|_| ())),
            "the body must be a JSON object (swarming.v2.Test), got a list"
        );
    }
}
