//! Envelopes → text frames.
//!
//! Payloads arrive already rendered as JSON text: a presence diff is rendered
//! once and then wrapped once per vsn, whatever the number of recipients.

use std::fmt::Write as _;

use crate::{events, Vsn};

/// One server frame. `payload` is JSON text (an object).
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub join_ref: Option<&'a str>,
    pub ref_: Option<&'a str>,
    pub topic: &'a str,
    pub event: &'a str,
    pub payload: &'a str,
}

/// A reply's status and response, rendered as `{"status":..,"response":..}`.
#[derive(Clone, Debug)]
pub struct Reply {
    pub ok: bool,
    /// JSON text of the response object.
    pub response: String,
}

impl Reply {
    /// `{"status":"ok","response":{}}`
    pub fn ok() -> Self {
        Reply::ok_with("{}")
    }

    pub fn ok_with(response: impl Into<String>) -> Self {
        Reply {
            ok: true,
            response: response.into(),
        }
    }

    /// `{"status":"error","response":{"reason":<reason>}}`
    pub fn error(reason: &str) -> Self {
        Reply {
            ok: false,
            response: format!("{{\"reason\":{}}}", json_str(reason)),
        }
    }

    /// `{"status":"error","response":{}}`
    pub fn error_empty() -> Self {
        Reply {
            ok: false,
            response: "{}".into(),
        }
    }

    pub fn payload(&self) -> String {
        let status = if self.ok { "ok" } else { "error" };
        format!("{{\"status\":\"{status}\",\"response\":{}}}", self.response)
    }
}

impl<'a> Outgoing<'a> {
    /// A reply to a client push: echoes its join_ref and ref.
    pub fn reply(
        join_ref: Option<&'a str>,
        ref_: Option<&'a str>,
        topic: &'a str,
        payload: &'a str,
    ) -> Self {
        Outgoing {
            join_ref,
            ref_,
            topic,
            event: events::REPLY,
            payload,
        }
    }

    /// A push from a channel to its own client: carries the join ref, ref null.
    pub fn push(
        join_ref: Option<&'a str>,
        topic: &'a str,
        event: &'a str,
        payload: &'a str,
    ) -> Self {
        Outgoing {
            join_ref,
            ref_: None,
            topic,
            event,
            payload,
        }
    }

    /// A message fanned out to every member (`presence_diff`, `broadcast`): no refs.
    pub fn fanout(topic: &'a str, event: &'a str, payload: &'a str) -> Self {
        Outgoing {
            join_ref: None,
            ref_: None,
            topic,
            event,
            payload,
        }
    }

    /// `phx_close` for a channel: ref and join_ref are both the join ref.
    pub fn close(join_ref: Option<&'a str>, topic: &'a str) -> Self {
        Outgoing {
            join_ref,
            ref_: join_ref,
            topic,
            event: events::CLOSE,
            payload: "{}",
        }
    }

    /// The text frame for a connection speaking `vsn`.
    pub fn encode(&self, vsn: Vsn) -> String {
        let mut out = String::with_capacity(self.payload.len() + self.topic.len() + 64);
        match vsn {
            // vsn 1: exactly topic, event, payload, ref (ref always present, join_ref never).
            Vsn::V1 => {
                let _ = write!(
                    out,
                    "{{\"topic\":{},\"event\":{},\"payload\":{},\"ref\":{}}}",
                    json_str(self.topic),
                    json_str(self.event),
                    self.payload,
                    json_opt(self.ref_)
                );
            }
            Vsn::V2 => {
                let _ = write!(
                    out,
                    "[{},{},{},{},{}]",
                    json_opt(self.join_ref),
                    json_opt(self.ref_),
                    json_str(self.topic),
                    json_str(self.event),
                    self.payload
                );
            }
        }
        out
    }

    /// The text frame a *client* sends on a connection speaking `vsn`.
    ///
    /// Unlike [`Outgoing::encode`] (server-shaped), vsn 1 carries `join_ref`
    /// too, as realtime-js and realtime-py send it; vsn 2 is the same array.
    pub fn encode_client(&self, vsn: Vsn) -> String {
        match vsn {
            Vsn::V1 => format!(
                "{{\"topic\":{},\"event\":{},\"payload\":{},\"ref\":{},\"join_ref\":{}}}",
                json_str(self.topic),
                json_str(self.event),
                self.payload,
                json_opt(self.ref_),
                json_opt(self.join_ref)
            ),
            Vsn::V2 => self.encode(Vsn::V2),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn heartbeat_reply_echoes_null_ref_in_v1_and_ref_in_v2() {
        let p = Reply::ok().payload();
        let v1 = Outgoing::reply(None, None, "phoenix", &p).encode(Vsn::V1);
        let v1: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(
            v1,
            json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null})
        );
        let v2 = Outgoing::reply(None, Some("7"), "phoenix", &p).encode(Vsn::V2);
        assert_eq!(
            v2,
            r#"[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn v1_never_carries_join_ref_and_close_uses_join_ref() {
        let v1 = Outgoing::close(Some("4"), "realtime:a").encode(Vsn::V1);
        let v1: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(
            v1,
            json!({"topic":"realtime:a","event":"phx_close","payload":{},"ref":"4"})
        );
        let v2 = Outgoing::close(Some("4"), "realtime:a").encode(Vsn::V2);
        assert_eq!(v2, r#"["4","4","realtime:a","phx_close",{}]"#);
    }

    #[test]
    fn client_frames_carry_join_ref_in_both_vsns() {
        let push = Outgoing {
            join_ref: Some("1"),
            ref_: Some("2"),
            topic: "realtime:a",
            event: "presence",
            payload: r#"{"event":"track"}"#,
        };
        let v1: Value = serde_json::from_str(&push.encode_client(Vsn::V1)).unwrap();
        assert_eq!(
            v1,
            json!({"topic":"realtime:a","event":"presence","payload":{"event":"track"},"ref":"2","join_ref":"1"})
        );
        let back = crate::decode(Vsn::V1, &push.encode_client(Vsn::V1)).unwrap();
        assert_eq!(back.join_ref.as_deref(), Some("1"));
        assert_eq!(
            push.encode_client(Vsn::V2),
            r#"["1","2","realtime:a","presence",{"event":"track"}]"#
        );
        let hb = Outgoing {
            join_ref: None,
            ref_: Some("3"),
            topic: "phoenix",
            event: "heartbeat",
            payload: "{}",
        };
        let v1: Value = serde_json::from_str(&hb.encode_client(Vsn::V1)).unwrap();
        assert_eq!(
            v1,
            json!({"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3","join_ref":null})
        );
    }

    #[test]
    fn error_reason_is_escaped() {
        let p = Reply::error("bad \"x\"").payload();
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(
            v,
            json!({"status":"error","response":{"reason":"bad \"x\""}})
        );
    }
}
