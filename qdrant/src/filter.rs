//! A request's filter, written as Qdrant's REST API writes filters (the JSON the embedded
//! engine reads), turned into the gRPC API's `Filter`. Every condition a recommend's
//! filter may use on item payloads is covered: `must`, `should`, `must_not` and
//! `min_should`, nested filters, `match` (value, any, except, text, phrase), `range`,
//! `values_count`, `is_empty`, `is_null` and `has_id` (item ids, mapped to point ids).
//! Anything else is refused with a message, as the embedded engine refuses what it cannot
//! parse.

use qdrant_client::qdrant::{
    condition::ConditionOneOf, r#match::MatchValue, Condition, FieldCondition, Filter, Match,
    MinShould, PointId, Range, RepeatedIntegers, RepeatedStrings, ValuesCount,
};
use redrec_shard_api::points::point_uuid;
use serde_json::{Map, Value};

/// `filter` as a gRPC filter, or why it is not one.
pub fn to_grpc(filter: &Value) -> Result<Filter, String> {
    let m = filter
        .as_object()
        .ok_or("a filter is a JSON object (a Qdrant filter)")?;
    let mut out = Filter::default();
    for (key, v) in m {
        match key.as_str() {
            "must" => out.must = conditions(v)?,
            "should" => out.should = conditions(v)?,
            "must_not" => out.must_not = conditions(v)?,
            "min_should" => {
                let o = v.as_object().ok_or("min_should is an object")?;
                let min_count = o
                    .get("min_count")
                    .and_then(Value::as_u64)
                    .ok_or("min_should.min_count is a count")?;
                let conditions = conditions(o.get("conditions").unwrap_or(&Value::Null))?;
                out.min_should = Some(MinShould {
                    conditions,
                    min_count,
                });
            }
            other => return Err(format!("unknown filter clause {other:?}")),
        }
    }
    Ok(out)
}

/// A clause's conditions: one condition or a list of them (null: none).
fn conditions(v: &Value) -> Result<Vec<Condition>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a.iter().map(condition).collect(),
        Value::Object(_) => Ok(vec![condition(v)?]),
        _ => Err("a filter clause holds conditions (objects)".into()),
    }
}

fn condition(v: &Value) -> Result<Condition, String> {
    let m = v.as_object().ok_or("a condition is a JSON object")?;
    if let Some(key) = m.get("key") {
        let key = key.as_str().ok_or("a condition's key is a string")?;
        return field(key, m);
    }
    if let Some(e) = m.get("is_empty") {
        return Ok(Condition::is_empty(key_of(e, "is_empty")?));
    }
    if let Some(e) = m.get("is_null") {
        return Ok(Condition::is_null(key_of(e, "is_null")?));
    }
    if let Some(ids) = m.get("has_id") {
        let ids = ids.as_array().ok_or("has_id is a list of item ids")?;
        let ids = ids
            .iter()
            .map(|id| match id {
                Value::String(s) => Ok(PointId::from(point_uuid(s).to_string())),
                _ => Err("has_id lists item ids (strings)".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Condition::has_id(ids));
    }
    if let Some(n) = m.get("nested") {
        let o = n.as_object().ok_or("nested is an object")?;
        let key = o
            .get("key")
            .and_then(Value::as_str)
            .ok_or("nested.key is a string")?;
        let filter = to_grpc(o.get("filter").ok_or("nested.filter is missing")?)?;
        return Ok(Condition::nested(key, filter));
    }
    if m.contains_key("must") || m.contains_key("should") || m.contains_key("must_not") {
        return Ok(Condition::from(to_grpc(v)?));
    }
    Err(format!(
        "unknown condition {}",
        serde_json::to_string(v).unwrap_or_default()
    ))
}

/// `{"key": K}` of `is_empty` and `is_null`.
fn key_of(v: &Value, what: &str) -> Result<String, String> {
    v.get("key")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{what}.key is a string"))
}

fn field(key: &str, m: &Map<String, Value>) -> Result<Condition, String> {
    let mut f = FieldCondition {
        key: key.to_string(),
        ..Default::default()
    };
    let mut any = false;
    for (k, v) in m {
        match k.as_str() {
            "key" => continue,
            "match" => f.r#match = Some(matching(v)?),
            "range" => f.range = Some(range(v)?),
            "values_count" => f.values_count = Some(values_count(v)?),
            other => return Err(format!("unsupported condition on {key:?}: {other:?}")),
        }
        any = true;
    }
    if !any {
        return Err(format!("the condition on {key:?} says nothing to check"));
    }
    Ok(Condition {
        condition_one_of: Some(ConditionOneOf::Field(f)),
    })
}

fn matching(v: &Value) -> Result<Match, String> {
    let m = v.as_object().ok_or("match is an object")?;
    let (k, v) = match m.iter().next() {
        Some(kv) if m.len() == 1 => kv,
        _ => return Err("match takes one of value, any, except, text, phrase".into()),
    };
    let value = match (k.as_str(), v) {
        ("value", Value::String(s)) => MatchValue::Keyword(s.clone()),
        ("value", Value::Bool(b)) => MatchValue::Boolean(*b),
        ("value", Value::Number(n)) => {
            MatchValue::Integer(n.as_i64().ok_or("match.value is an integer, not a float")?)
        }
        ("text", Value::String(s)) => MatchValue::Text(s.clone()),
        ("phrase", Value::String(s)) => MatchValue::Phrase(s.clone()),
        ("any", Value::Array(a)) => match list(a)? {
            List::Strings(s) => MatchValue::Keywords(RepeatedStrings { strings: s }),
            List::Integers(i) => MatchValue::Integers(RepeatedIntegers { integers: i }),
        },
        ("except", Value::Array(a)) => match list(a)? {
            List::Strings(s) => MatchValue::ExceptKeywords(RepeatedStrings { strings: s }),
            List::Integers(i) => MatchValue::ExceptIntegers(RepeatedIntegers { integers: i }),
        },
        (k, v) => return Err(format!("unsupported match {k:?}: {v}")),
    };
    Ok(Match {
        match_value: Some(value),
    })
}

enum List {
    Strings(Vec<String>),
    Integers(Vec<i64>),
}

/// `any` and `except`: all strings or all integers.
fn list(a: &[Value]) -> Result<List, String> {
    if let Some(s) = a.iter().map(|v| v.as_str().map(str::to_string)).collect() {
        return Ok(List::Strings(s));
    }
    if let Some(i) = a.iter().map(Value::as_i64).collect() {
        return Ok(List::Integers(i));
    }
    Err("a match list holds strings or integers, not a mix".into())
}

fn bound(m: &Map<String, Value>, k: &str) -> Result<Option<f64>, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("range.{k} is a number")),
    }
}

fn range(v: &Value) -> Result<Range, String> {
    let m = v.as_object().ok_or("range is an object")?;
    if let Some(k) = m
        .keys()
        .find(|k| !["lt", "gt", "lte", "gte"].contains(&k.as_str()))
    {
        return Err(format!("unknown range bound {k:?}"));
    }
    Ok(Range {
        lt: bound(m, "lt")?,
        gt: bound(m, "gt")?,
        gte: bound(m, "gte")?,
        lte: bound(m, "lte")?,
    })
}

fn values_count(v: &Value) -> Result<ValuesCount, String> {
    let m = v.as_object().ok_or("values_count is an object")?;
    let get = |k: &str| -> Result<Option<u64>, String> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("values_count.{k} is a count")),
        }
    };
    Ok(ValuesCount {
        lt: get("lt")?,
        gt: get("gt")?,
        gte: get("gte")?,
        lte: get("lte")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(c: &Condition) -> &FieldCondition {
        match &c.condition_one_of {
            Some(ConditionOneOf::Field(f)) => f,
            other => panic!("not a field condition: {other:?}"),
        }
    }

    #[test]
    fn rest_filters_become_grpc_filters() {
        let f = to_grpc(&json!({
            "must": [
                {"key": "category", "match": {"value": "coffee"}},
                {"key": "price", "range": {"gte": 1, "lt": 9.5}},
            ],
            "should": {"key": "tag", "match": {"any": ["a", "b"]}},
            "must_not": [{"has_id": ["i1"]}, {"is_empty": {"key": "title"}}],
        }))
        .unwrap();
        assert_eq!(f.must.len(), 2);
        let category = field_of(&f.must[0]);
        assert_eq!(category.key, "category");
        assert_eq!(
            category.r#match.as_ref().unwrap().match_value,
            Some(MatchValue::Keyword("coffee".into()))
        );
        let price = field_of(&f.must[1]).range.unwrap();
        assert_eq!(
            (price.gte, price.lt, price.gt),
            (Some(1.0), Some(9.5), None)
        );
        assert_eq!(
            field_of(&f.should[0]).r#match.as_ref().unwrap().match_value,
            Some(MatchValue::Keywords(RepeatedStrings {
                strings: vec!["a".into(), "b".into()]
            }))
        );
        match &f.must_not[0].condition_one_of {
            Some(ConditionOneOf::HasId(h)) => {
                assert_eq!(h.has_id, vec![PointId::from(point_uuid("i1").to_string())])
            }
            other => panic!("{other:?}"),
        }
        // A nested boolean filter stays nested.
        let f =
            to_grpc(&json!({"must": [{"should": [{"key": "n", "match": {"value": 3}}]}]})).unwrap();
        match &f.must[0].condition_one_of {
            Some(ConditionOneOf::Filter(inner)) => assert_eq!(inner.should.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_not_a_filter_is_refused() {
        for bad in [
            json!([]),
            json!({"must": [{"key": "category", "match": {"nope": 1}}]}),
            json!({"must": [{"key": "category"}]}),
            json!({"must": [{"key": "p", "range": {"between": 3}}]}),
            json!({"must": [{"key": "p", "match": {"any": ["a", 1]}}]}),
            json!({"must": [{"key": "p", "match": {"value": 1.5}}]}),
            json!({"often": []}),
            json!({"must": [{"geo": 1}]}),
            json!({"must": [{"has_id": [1]}]}),
        ] {
            assert!(to_grpc(&bad).is_err(), "{bad}");
        }
    }
}
