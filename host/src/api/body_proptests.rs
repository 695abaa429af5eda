//! What the JSON-body properties of each route share: a route that extracts
//! a body type the way the real one does, behind the middleware every route
//! has, and generators of bodies from random bytes to near-valid objects.
//! Each route's module runs them against its own body type and field checks.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::post;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tower::ServiceExt;

use crate::app::MAX_BODY_BYTES;
use crate::error::{AppResult, LoopJson};
use crate::proptest_support::block_on;

/// Sends `body` to a route that takes `T` with [`LoopJson`] (or, when
/// `optional`, `Option<LoopJson<T>>`) and runs `check` on it; asserts that
/// the answer is 200 or a Loop error for bad input (4xx with the matching
/// errno), never a 5xx. Returns the status.
pub(super) fn post_body<T>(
    body: Vec<u8>,
    content_type: Option<&str>,
    optional: bool,
    check: fn(T) -> AppResult<()>,
) -> StatusCode
where
    T: DeserializeOwned + Send + 'static,
{
    let routes = Router::new()
        .route(
            "/required",
            post(move |LoopJson(value): LoopJson<T>| async move { check(value) }),
        )
        .route(
            "/optional",
            post(move |value: Option<LoopJson<T>>| async move {
                match value {
                    Some(LoopJson(value)) => check(value),
                    None => Ok(()),
                }
            }),
        );
    let app = super::with_middleware(routes, tower_http::cors::AllowOrigin::list([]));
    let mut request = Request::post(if optional { "/optional" } else { "/required" });
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let request = request.body(Body::from(body)).unwrap();
    let (status, answer) = block_on(async move {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, bytes)
    });
    if status == StatusCode::OK {
        return status;
    }
    let answer: Value = serde_json::from_slice(&answer)
        .unwrap_or_else(|err| panic!("{status} without a JSON body ({err}): {answer:?}"));
    assert_eq!(answer["code"], status.as_u16(), "{answer}");
    let errno = answer["errno"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer}"));
    let expected: &[u64] = match status {
        StatusCode::BAD_REQUEST => &[106, 107, 108],
        StatusCode::NOT_ACCEPTABLE => &[106],
        StatusCode::PAYLOAD_TOO_LARGE => &[113],
        _ => panic!("unexpected {status} for a request body: {answer}"),
    };
    assert!(
        expected.contains(&errno),
        "{status} with errno {errno}: {answer}"
    );
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    status
}

/// Content types clients send, right and wrong.
pub(super) fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(
        0.9,
        prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.loop+json",
            "text/plain",
            "application/x-www-form-urlencoded",
        ]),
    )
}

/// Any bytes, mostly small, sometimes around the body limit.
pub(super) fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(any::<u8>(), MAX_BODY_BYTES - 16..MAX_BODY_BYTES + 16),
    ]
}

/// Strings that field checks care about: empty, blank, control characters,
/// non-ASCII, and lengths around every limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,8}",
        "\\PC{0,20}",
        "(?s).{0,20}",
        "[ \t\n]{0,3}",
        (100usize..300, "[a-zé€😀]").prop_map(|(n, c)| c.repeat(n)),
        Just("audio".to_string()),
        Just("audio-video".to_string()),
        Just("https://push.example.com/x".to_string()),
    ]
}

/// Any JSON value, a few levels deep.
pub(super) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..1000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{0,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Objects with the body's own field names (`fields`, nested ones written
/// `outer.inner`) holding values of random types, and now and then a field
/// no body has; serialized, as clients send them.
pub(super) fn near_valid_object(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        9 => prop::sample::select(fields).prop_map(String::from),
        1 => "[a-zA-Z_]{1,12}",
    ];
    prop::collection::vec((field, json_value()), 0..6).prop_map(|entries| {
        let mut object = Map::new();
        for (field, value) in entries {
            match field.split_once('.') {
                Some((outer, inner)) => {
                    let slot = object
                        .entry(outer)
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(nested) = slot {
                        nested.insert(inner.to_string(), value);
                    }
                }
                None => {
                    object.insert(field, value);
                }
            }
        }
        serde_json::to_vec(&Value::Object(object)).unwrap()
    })
}

/// A valid-looking body with a few bytes changed, inserted or dropped.
pub(super) fn mutated(body: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        body,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    )
        .prop_map(|(mut body, edits)| {
            for (at, byte, how) in edits {
                let i = at.index(body.len() + 1);
                match how {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ if i < body.len() => {
                        body.remove(i);
                    }
                    _ => body.push(byte),
                }
            }
            body
        })
}

/// Nesting far past serde_json's recursion limit, up to past the body limit.
pub(super) fn deeply_nested() -> impl Strategy<Value = Vec<u8>> {
    let shapes: Vec<(&[u8], &[u8])> = vec![
        (b"[", b"]"),
        (b"{\"a\":", b"}"),
        (b"{\"callerId\":[", b"]}"),
        (b"[{\"x\":", b"}]"),
    ];
    (
        1usize..MAX_BODY_BYTES / 4 + 8,
        prop::sample::select(shapes),
        any::<bool>(),
    )
        .prop_map(|(depth, (open, close), closed)| {
            let mut body = open.repeat(depth);
            if closed {
                body.extend_from_slice(b"1");
                body.extend_from_slice(&close.repeat(depth));
            }
            body
        })
}

/// Every kind of body above, for one body type's fields.
pub(super) fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => any_bytes(),
        4 => near_valid_object(fields),
        2 => mutated(near_valid_object(fields)),
        1 => deeply_nested(),
    ]
}
