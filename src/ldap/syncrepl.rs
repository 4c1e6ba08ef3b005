//! RFC 4533 content synchronisation (refreshOnly) on the source: the search
//! that returns only what changed since a cookie, and the parsing of the
//! protocol's messages. The values are parsed here, defensively, rather than
//! with ldap3's parsers, which panic on malformed input from a server; the
//! entries go through [`contain::entry`] and every ldap3 call through
//! [`contain::guard`] (see `contain`).

use std::time::Duration;

use ldap3::asn1::{parse_tag, StructureTag, TagClass, Types, PL};
use ldap3::controls::{RawControl, SyncRequest};
use ldap3::{ResultEntry, Scope, SearchEntry, SearchStream};

use crate::ldap::contain::{self, guard};
use crate::ldap::{Conn, LdapError, Link};

pub const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
pub const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
pub const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";

/// The server's answer to a cookie it can no longer serve
/// (e-syncRefreshRequired): the client must start again from nothing.
pub const REFRESH_REQUIRED: u32 = 4096;

/// What one message of a sync search says.
#[derive(Debug)]
pub enum SyncMessage {
    /// An entry added, or changed, since the cookie: all requested attributes.
    Changed(SearchEntry),
    /// An entry unchanged since the cookie (present phase): only its UUID.
    Present(String),
    /// An entry deleted, or no longer matching the filter, since the cookie.
    Deleted(String),
    /// A batch of UUIDs: deleted (`deletes`) or present.
    IdSet { deletes: bool, uuids: Vec<String> },
    /// Protocol bookkeeping with nothing for the client to do.
    Other,
}

/// How a sync search ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDone {
    pub cookie: Option<Vec<u8>>,
    /// True: unmentioned entries are unchanged (delete phase). False: the
    /// server used the present phase, and every entry it did not mention as
    /// present or changed is gone.
    pub refresh_deletes: bool,
}

/// An entryUUID (16 octets) in its usual text form, as slapd spells it.
pub fn uuid_text(raw: &[u8]) -> Option<String> {
    if raw.len() != 16 {
        return None;
    }
    let h: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn parse(bytes: &[u8]) -> Option<StructureTag> {
    match parse_tag(bytes) {
        Ok((_, tag)) => Some(tag),
        Err(_) => None,
    }
}

fn primitive(tag: &StructureTag) -> Option<&[u8]> {
    match &tag.payload {
        PL::P(v) => Some(v),
        PL::C(_) => None,
    }
}

fn children(tag: StructureTag) -> Option<Vec<StructureTag>> {
    match tag.payload {
        PL::C(v) => Some(v),
        PL::P(_) => None,
    }
}

fn is_universal(tag: &StructureTag, t: Types) -> bool {
    tag.class == TagClass::Universal && tag.id == t as u64
}

fn boolean(tag: &StructureTag) -> Option<bool> {
    primitive(tag).map(|v| v.first().copied().unwrap_or(0) != 0)
}

/// syncStateValue ::= SEQUENCE { state ENUMERATED, entryUUID, cookie OPTIONAL }
/// → (state 0 present, 1 add, 2 modify, 3 delete; UUID).
pub fn parse_state(val: &[u8]) -> Option<(u8, String)> {
    let items = children(parse(val)?)?;
    let state = primitive(items.first()?)?;
    let state = *state.last()?;
    let uuid = uuid_text(primitive(items.get(1)?)?)?;
    Some((state, uuid))
}

/// syncDoneValue ::= SEQUENCE { cookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE }
pub fn parse_done(val: &[u8]) -> Option<SyncDone> {
    let mut done = SyncDone {
        cookie: None,
        refresh_deletes: false,
    };
    for item in children(parse(val)?)? {
        if is_universal(&item, Types::OctetString) {
            done.cookie = Some(primitive(&item)?.to_vec());
        } else if is_universal(&item, Types::Boolean) {
            done.refresh_deletes = boolean(&item)?;
        }
    }
    Some(done)
}

/// syncInfoValue (the intermediate response's value): only syncIdSet [3]
/// carries anything the client must act on; refreshDelete [1] and
/// refreshPresent [2] only mark phases; newcookie [0] is bookkeeping.
pub fn parse_info(val: &[u8]) -> Option<SyncMessage> {
    let tag = parse(val)?;
    if tag.class != TagClass::Context {
        return None;
    }
    match tag.id {
        0..=2 => Some(SyncMessage::Other),
        3 => {
            let mut deletes = false;
            let mut uuids = Vec::new();
            for item in children(tag)? {
                if is_universal(&item, Types::Boolean) {
                    deletes = boolean(&item)?;
                } else if is_universal(&item, Types::Set) {
                    for u in children(item)? {
                        uuids.push(uuid_text(primitive(&u)?)?);
                    }
                }
            }
            Some(SyncMessage::IdSet { deletes, uuids })
        }
        _ => None,
    }
}

/// The value of an intermediate response, if its name is the sync info OID.
fn intermediate_value(entry: ResultEntry) -> Option<Vec<u8>> {
    let mut name = None;
    let mut value = None;
    for part in children(entry.0)? {
        match part.id {
            0 => name = primitive(&part).map(|v| String::from_utf8_lossy(v).into_owned()),
            1 => value = primitive(&part).map(<[u8]>::to_vec),
            _ => {}
        }
    }
    (name.as_deref() == Some(SYNC_INFO_OID))
        .then_some(value)
        .flatten()
}

fn control_value<'c>(ctrls: &'c [ldap3::controls::Control], oid: &str) -> Option<&'c [u8]> {
    ctrls
        .iter()
        .find(|c| c.1.ctype == oid)
        .and_then(|c| c.1.val.as_deref())
}

/// A refreshOnly sync search in progress.
pub struct SyncSearch {
    stream: SearchStream<'static, String, Vec<String>>,
    link: Link,
    url: String,
    base: String,
    timeout: Duration,
}

impl SyncSearch {
    fn malformed(&self, what: &str) -> LdapError {
        LdapError::Protocol {
            url: self.url.clone(),
            what: self.what(),
            detail: format!("malformed {what} from the server"),
        }
    }

    fn what(&self) -> String {
        format!("content synchronisation under \"{}\"", self.base)
    }

    /// The next message, or `None` when the server has sent them all.
    pub async fn next(&mut self) -> Result<Option<SyncMessage>, LdapError> {
        let next = tokio::time::timeout(self.timeout, guard(self.stream.next())).await;
        let re = match next {
            Err(_) => {
                return Err(LdapError::Timeout {
                    url: self.url.clone(),
                    secs: self.timeout.as_secs(),
                    what: format!("content synchronisation under {}", self.base),
                })
            }
            Ok(Err(panic)) => return Err(self.link.malformed(self.what(), panic)),
            Ok(Ok(Err(e))) => return Err(self.link.failed(self.what(), e)),
            Ok(Ok(Ok(None))) => return Ok(None),
            Ok(Ok(Ok(Some(re)))) => re,
        };
        if re.is_ref() {
            return Ok(Some(SyncMessage::Other));
        }
        if re.is_intermediate() {
            let Some(value) = intermediate_value(re) else {
                return Ok(Some(SyncMessage::Other));
            };
            return parse_info(&value)
                .map(Some)
                .ok_or_else(|| self.malformed("sync info message"));
        }
        let state = match control_value(&re.1, SYNC_STATE_OID) {
            None => None,
            Some(v) => Some(parse_state(v).ok_or_else(|| self.malformed("sync state control"))?),
        };
        Ok(Some(match state {
            Some((0, uuid)) => SyncMessage::Present(uuid),
            Some((3, uuid)) => SyncMessage::Deleted(uuid),
            _ => SyncMessage::Changed(
                contain::entry(re).map_err(|detail| self.link.malformed(self.what(), detail))?,
            ),
        }))
    }

    /// Ends the search: the new cookie and the phase the server used. A
    /// refusal keeps its result code (4096: the cookie is too old).
    pub async fn finish(mut self) -> Result<SyncDone, LdapError> {
        let res = guard(self.stream.finish())
            .await
            .map_err(|panic| self.link.malformed(self.what(), panic))?;
        if res.rc != 0 {
            return Err(LdapError::Operation {
                url: self.url.clone(),
                op: "content synchronisation under",
                dn: self.base.clone(),
                rc: res.rc,
                text: crate::ldap::result_text(res.rc, &res.text),
            });
        }
        match control_value(&res.ctrls, SYNC_DONE_OID) {
            Some(v) => parse_done(v).ok_or_else(|| self.malformed("sync done control")),
            // A server without RFC 4533 ignores the (non-critical) request.
            None => Ok(SyncDone {
                cookie: None,
                refresh_deletes: true,
            }),
        }
    }
}

impl Conn {
    /// Starts a refreshOnly content synchronisation: with a cookie, only the
    /// changes since it; without, everything (then a cookie to start from).
    pub async fn sync_search(
        &mut self,
        base: &str,
        filter: &str,
        attrs: Vec<String>,
        cookie: Option<Vec<u8>>,
    ) -> Result<SyncSearch, LdapError> {
        let request = SyncRequest {
            cookie,
            ..Default::default()
        };
        let mut ldap = self.handle();
        let link = self.link();
        let what = || format!("content synchronisation under \"{base}\"");
        let stream = guard(
            ldap.with_controls(RawControl::from(request))
                .streaming_search(base, Scope::Subtree, filter, attrs),
        )
        .await
        .map_err(|panic| link.malformed(what(), panic))?
        .map_err(|e| link.failed(what(), e))?;
        Ok(SyncSearch {
            stream,
            link,
            url: self.url().to_string(),
            base: base.to_string(),
            timeout: self.timeout(),
        })
    }

    /// The source's current cookie, without reading any entry: a sync
    /// search whose filter matches nothing. `None` when the server does not
    /// offer RFC 4533.
    pub async fn current_cookie(&mut self, base: &str) -> Result<Option<Vec<u8>>, LdapError> {
        let mut search = self
            .sync_search(base, "(!(objectClass=*))", vec!["1.1".into()], None)
            .await?;
        while search.next().await?.is_some() {}
        Ok(search.finish().await?.cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_written_as_slapd_writes_them() {
        let raw = [
            0x81, 0xaf, 0x66, 0x62, 0x7d, 0x1a, 0x10, 0x41, 0x8b, 0xd9, 0x0f, 0x6b, 0x27, 0x51,
            0xd2, 0xc6,
        ];
        assert_eq!(
            uuid_text(&raw).as_deref(),
            Some("81af6662-7d1a-1041-8bd9-0f6b2751d2c6")
        );
        assert_eq!(uuid_text(&raw[..15]), None);
    }

    #[test]
    fn a_sync_state_control_from_slapd_parses() {
        // Captured from slapd 2.5: state add, the UUID above, no cookie.
        let val = [
            0x30, 0x15, 0x0a, 0x01, 0x01, 0x04, 0x10, 0x81, 0xaf, 0x66, 0x62, 0x7d, 0x1a, 0x10,
            0x41, 0x8b, 0xd9, 0x0f, 0x6b, 0x27, 0x51, 0xd2, 0xc6,
        ];
        assert_eq!(
            parse_state(&val),
            Some((1, "81af6662-7d1a-1041-8bd9-0f6b2751d2c6".into()))
        );
    }

    #[test]
    fn a_sync_done_control_from_slapd_parses() {
        // "rid=000,csn=...", refreshDeletes TRUE.
        let cookie = b"rid=000,csn=20261125125030.015691Z#000000#000#000000";
        let mut val = vec![0x30, (cookie.len() + 5) as u8, 0x04, cookie.len() as u8];
        val.extend_from_slice(cookie);
        val.extend_from_slice(&[0x01, 0x01, 0xff]);
        assert_eq!(
            parse_done(&val),
            Some(SyncDone {
                cookie: Some(cookie.to_vec()),
                refresh_deletes: true
            })
        );
        // Without the boolean, refreshDeletes defaults to FALSE.
        assert_eq!(
            parse_done(&[0x30, 0x00]),
            Some(SyncDone {
                cookie: None,
                refresh_deletes: false
            })
        );
    }

    #[test]
    fn a_sync_id_set_parses_and_garbage_is_refused() {
        // [3] { refreshDeletes TRUE, SET { uuid } }
        let mut val = vec![0xa3, 0x17, 0x01, 0x01, 0xff, 0x31, 0x12, 0x04, 0x10];
        val.extend_from_slice(&[0x11; 16]);
        match parse_info(&val) {
            Some(SyncMessage::IdSet { deletes, uuids }) => {
                assert!(deletes);
                assert_eq!(uuids, vec!["11111111-1111-1111-1111-111111111111"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_info(&[0xff, 0x00]).is_none());
        assert!(parse_state(&[0x30]).is_none());
        assert!(parse_done(b"junk").is_none());
    }
}
