//! Stage 3, map: turns an in-scope source entry into the target object the
//! mapping file describes (object classes, RDN, attributes).
//!
//! A mapping rule takes its values from exactly one of: `copy` (a source
//! attribute), `template` (`"{givenName} {sn}"`), `first_of` (the first
//! template that yields something), `value` (a constant). Then it applies
//! `transform`s, keeps `values = "all" | "first" | "rest"`, and truncates to
//! `max_length`, which Active Directory enforces. The `phone` transform
//! reads `[phone]` (region, invalid: [`crate::engine::phone`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{line_of, parse_toml_file, FileError};
use crate::engine::phone::{Invalid, Phone};
use crate::engine::scope::SourceEntry;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    object_class: Vec<String>,
    rdn: RawRdn,
    #[serde(default)]
    attributes: BTreeMap<String, Spanned<RawRule>>,
    hide: Option<RawHide>,
    phone: Option<Spanned<RawPhone>>,
}

/// `[phone]`: how the `phone` transform reads numbers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhone {
    region: Option<String>,
    invalid: Option<String>,
}

/// `[hide]`: how to hide an object in place during its grace period.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHide {
    attribute: Spanned<String>,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRdn {
    attribute: Spanned<String>,
    first_of: Vec<Spanned<String>>,
    #[serde(default = "default_rdn_max")]
    max_length: usize,
    #[serde(default)]
    tie_breakers: Vec<Spanned<String>>,
}

fn default_rdn_max() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    copy: Option<String>,
    template: Option<String>,
    first_of: Option<Vec<String>>,
    value: Option<String>,
    #[serde(default)]
    transform: Vec<String>,
    #[serde(default)]
    values: Option<String>,
    max_length: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Trim,
    Lower,
    Upper,
    /// Telephone numbers to E.164 (`0161 496 0000` → `+441614960000`);
    /// invalid ones kept or dropped.
    Phone(Phone),
    /// The part of a mail address before the `@`.
    LocalPart,
    /// Only the characters Exchange allows in an alias (mailNickname).
    Alias,
}

impl Transform {
    fn parse(s: &str, phone: Phone) -> Option<Transform> {
        Some(match s {
            "trim" => Transform::Trim,
            "lower" => Transform::Lower,
            "upper" => Transform::Upper,
            "phone" => Transform::Phone(phone),
            "local_part" => Transform::LocalPart,
            "alias" => Transform::Alias,
            _ => return None,
        })
    }

    fn apply(self, v: &str) -> String {
        match self {
            Transform::Trim => v.trim().to_string(),
            Transform::Lower => v.to_lowercase(),
            Transform::Upper => v.to_uppercase(),
            Transform::Phone(p) => p.apply(v),
            Transform::LocalPart => v.split('@').next().unwrap_or("").to_string(),
            Transform::Alias => v
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(*c))
                .collect::<String>()
                .trim_matches('.')
                .to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    All,
    First,
    Rest,
}

impl Values {
    fn pick<T>(self, all: &[T]) -> &[T] {
        match self {
            Values::All => all,
            Values::First => &all[..all.len().min(1)],
            Values::Rest => all.get(1..).unwrap_or(&[]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Copy(String),
    FirstOf(Vec<Template>),
    Value(String),
}

/// A parsed template: literal text and `{attr}` / `{attr:N}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Attribute (lower-case) and an optional maximum number of characters.
    Attr(String, Option<usize>),
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed {{ in \"{s}\"")),
                        }
                    }
                    let (attr, len) = match name.split_once(':') {
                        Some((a, n)) => (
                            a,
                            Some(
                                n.parse::<usize>()
                                    .map_err(|_| format!("bad length in {{{name}}}"))?,
                            ),
                        ),
                        None => (name.as_str(), None),
                    };
                    let attr = attr.trim();
                    if attr.is_empty()
                        || !attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        return Err(format!("\"{{{name}}}\" is not an attribute placeholder"));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Attr(attr.to_lowercase(), len));
                }
                '}' => {
                    return Err(format!(
                        "unmatched }} in \"{s}\" (write }}}} for a literal)"
                    ))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    /// Renders with each placeholder's first value. Empty when every
    /// placeholder is empty (literal text alone does not count).
    pub fn render(&self, entry: &SourceEntry) -> String {
        let mut out = String::new();
        let mut any = false;
        let mut has_placeholder = false;
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Attr(a, len) => {
                    has_placeholder = true;
                    // {anchor} is the entry's anchor, whatever its attribute.
                    let v = if a == "anchor" {
                        entry.anchor.as_str()
                    } else {
                        entry.first(a).unwrap_or("").trim()
                    };
                    if !v.is_empty() {
                        any = true;
                    }
                    match len {
                        Some(n) => out.extend(v.chars().take(*n)),
                        None => out.push_str(v),
                    }
                }
            }
        }
        if has_placeholder && !any {
            return String::new();
        }
        trim_owned(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: String,
    source: Source,
    transforms: Vec<Transform>,
    values: Values,
    max_length: Option<usize>,
}

/// The mapping, loaded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub object_class: Vec<String>,
    pub rdn_attribute: String,
    rdn: Vec<Template>,
    pub rdn_max_length: usize,
    tie_breakers: Vec<Template>,
    pub rules: Vec<Rule>,
    /// Attribute and value that hide an object (e.g. from address lists).
    pub hide: Option<(String, String)>,
}

/// A target object as the mapping wants it, before it has a DN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The RDN value (unescaped, truncated) before any tie-breaker.
    pub rdn_value: String,
    /// Candidate RDN values in order of preference: the plain one, then one
    /// per tie-breaker. Deterministic for a given entry.
    pub rdn_candidates: Vec<String>,
    /// Target attribute → values. Never the RDN attribute; never empty.
    pub attrs: BTreeMap<String, Vec<String>>,
}

/// Drops control characters (AD rejects NUL and most are never intended)
/// and turns line breaks and tabs into spaces; drops bidi controls and
/// zero-width characters ([`crate::text::strip_invisible`]: they reorder
/// or hide a name in the address book). Every value the mapping writes,
/// the RDN included, goes through here. A value without any of these
/// (nearly all of them) is returned as it is, uncopied.
fn clean(v: &str) -> Cow<'_, str> {
    let control = v.chars().any(char::is_control);
    let invisible = crate::text::has_invisible(v);
    if !control && !invisible {
        return Cow::Borrowed(v);
    }
    let v: Cow<'_, str> = if control {
        Cow::Owned(
            v.chars()
                .map(|c| {
                    if c == '\n' || c == '\r' || c == '\t' {
                        ' '
                    } else {
                        c
                    }
                })
                .filter(|c| !c.is_control())
                .collect(),
        )
    } else {
        Cow::Borrowed(v)
    };
    if invisible {
        Cow::Owned(crate::text::strip_invisible(&v))
    } else {
        v
    }
}

/// `clean` for a string the caller owns: no copy when nothing changes.
fn clean_owned(v: String) -> String {
    match clean(&v) {
        Cow::Borrowed(_) => v,
        Cow::Owned(c) => c,
    }
}

/// `v.trim().to_string()` that keeps `v`'s buffer.
fn trim_owned(mut v: String) -> String {
    let end = v.trim_end().len();
    v.truncate(end);
    let start = v.len() - v.trim_start().len();
    v.drain(..start);
    v
}

/// Truncates to `max` characters (AD counts characters, not bytes).
pub fn truncate(v: &str, max: usize) -> String {
    truncated(Cow::Borrowed(v), max).into_owned()
}

/// `truncate` that hands back its input when it already fits.
fn truncated(v: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    // A string has at least one byte per character.
    if v.len() <= max || v.chars().count() <= max {
        v
    } else {
        Cow::Owned(
            v.chars()
                .take(max)
                .collect::<String>()
                .trim_end()
                .to_string(),
        )
    }
}

impl Rule {
    /// One value through `clean`, the transforms, `max_length` and a final
    /// trim: the value the target gets (empty values are dropped later).
    fn finish_value(&self, v: &str) -> String {
        let mut s = clean(v);
        for t in &self.transforms {
            s = Cow::Owned(t.apply(&s));
        }
        if let Some(max) = self.max_length {
            s = truncated(s, max);
        }
        if s.trim().len() == s.len() {
            s.into_owned()
        } else {
            s.trim().to_string()
        }
    }

    /// Whether the rule drops invalid telephone numbers: then `values`
    /// picks among the numbers left (the first valid one is the first).
    fn drops_invalid(&self) -> bool {
        self.transforms
            .iter()
            .any(|t| matches!(t, Transform::Phone(p) if p.invalid == Invalid::Drop))
    }
}

/// The target's default anchor attribute, which holds absync's ownership
/// marker (`absync:<anchor>`).
pub const DEFAULT_MARKER: &str = "adminDescription";

/// The attributes of an AD contact a mapping may write: its names, its
/// organisation, its telephone numbers and postal address, and Exchange's
/// mail routing and address-list attributes. Not among them: `objectClass`,
/// `adminDescription` (absync's default ownership marker), anything that
/// names another object (`manager`, `member`, `showInAddressBook`), and
/// anything that controls security or the directory (`nTSecurityDescriptor`,
/// `userAccountControl`, `servicePrincipalName`, ...).
pub const CONTACT_ATTRIBUTES: &[&str] = &[
    "cn",
    "displayName",
    "displayNamePrintable",
    "givenName",
    "sn",
    "initials",
    "middleName",
    "generationQualifier",
    "personalTitle",
    "title",
    "description",
    "info",
    "company",
    "department",
    "division",
    "physicalDeliveryOfficeName",
    "employeeID",
    "employeeNumber",
    "employeeType",
    "mail",
    "telephoneNumber",
    "otherTelephone",
    "mobile",
    "otherMobile",
    "homePhone",
    "otherHomePhone",
    "pager",
    "otherPager",
    "facsimileTelephoneNumber",
    "otherFacsimileTelephoneNumber",
    "ipPhone",
    "otherIpPhone",
    "wWWHomePage",
    "url",
    "streetAddress",
    "street",
    "postOfficeBox",
    "l",
    "st",
    "postalCode",
    "postalAddress",
    "c",
    "co",
    "countryCode",
    "targetAddress",
    "proxyAddresses",
    "mailNickname",
    "msExchHideFromAddressLists",
    "extensionAttribute1",
    "extensionAttribute2",
    "extensionAttribute3",
    "extensionAttribute4",
    "extensionAttribute5",
    "extensionAttribute6",
    "extensionAttribute7",
    "extensionAttribute8",
    "extensionAttribute9",
    "extensionAttribute10",
    "extensionAttribute11",
    "extensionAttribute12",
    "extensionAttribute13",
    "extensionAttribute14",
    "extensionAttribute15",
];

/// Why a mapping may not write the target attribute `attr` when absync's
/// ownership marker lives in `marker`; `None` when it may.
pub fn forbidden_target(attr: &str, marker: &str) -> Option<String> {
    let attr = attr.trim();
    let is = |name: &str| attr.eq_ignore_ascii_case(name);
    if is(marker) {
        Some(format!(
            "{attr} holds absync's ownership marker (target.anchor_attribute): a mapping \
             may not write it"
        ))
    } else if is("objectClass") {
        Some(
            "objectClass says what the object is: it is set by object_class, never by a rule"
                .into(),
        )
    } else if is(DEFAULT_MARKER) {
        Some(format!(
            "{attr} is absync's default ownership marker: a mapping may not write it"
        ))
    } else if !CONTACT_ATTRIBUTES.iter().any(|a| is(a)) {
        Some(format!(
            "{attr} is not among the contact attributes absync may write: {}",
            CONTACT_ATTRIBUTES.join(", ")
        ))
    } else {
        None
    }
}

/// Every attribute the mapping writes (the RDN's, each rule's, `[hide]`'s)
/// against [`forbidden_target`].
fn check_targets(
    raw: &RawMapping,
    marker: &str,
    err: &dyn Fn(std::ops::Range<usize>, &str, String) -> FileError,
) -> Result<(), FileError> {
    let a = &raw.rdn.attribute;
    if let Some(why) = forbidden_target(a.get_ref(), marker) {
        return Err(err(a.span(), "rdn.attribute", why));
    }
    for (target, rule) in &raw.attributes {
        if let Some(why) = forbidden_target(target, marker) {
            return Err(err(rule.span(), &format!("attributes.{target}"), why));
        }
    }
    if let Some(h) = &raw.hide {
        if let Some(why) = forbidden_target(h.attribute.get_ref(), marker) {
            return Err(err(h.attribute.span(), "hide.attribute", why));
        }
    }
    Ok(())
}

impl Mapping {
    /// Loads a mapping for a target whose ownership marker is the default
    /// `adminDescription` (see [`Self::load_for`]).
    pub fn load(path: &Path) -> Result<Mapping, FileError> {
        Self::load_for(path, DEFAULT_MARKER)
    }

    /// Loads and checks a mapping for a target whose anchor (absync's
    /// ownership marker) lives in `marker`: no rule, RDN or `[hide]` may
    /// write the marker, `objectClass`, or anything outside
    /// [`CONTACT_ATTRIBUTES`] (refused with file, line and key).
    pub fn load_for(path: &Path, marker: &str) -> Result<Mapping, FileError> {
        let (raw, text): (RawMapping, String) = parse_toml_file(path)?;
        let err = |span: std::ops::Range<usize>, key: &str, m: String| {
            FileError::new(path, Some(line_of(&text, span.start)), Some(key), m)
        };
        check_targets(&raw, marker, &err)?;
        let parse_all = |ts: &[Spanned<String>], key: &str| -> Result<Vec<Template>, FileError> {
            ts.iter()
                .map(|t| Template::parse(t.get_ref()).map_err(|m| err(t.span(), key, m)))
                .collect()
        };
        if raw.object_class.is_empty() {
            return Err(FileError::new(
                path,
                None,
                Some("object_class"),
                "must name at least one object class".into(),
            ));
        }
        let rdn = parse_all(&raw.rdn.first_of, "rdn.first_of")?;
        if rdn.is_empty() {
            return Err(FileError::new(
                path,
                None,
                Some("rdn.first_of"),
                "must hold at least one template".into(),
            ));
        }
        let tie_breakers = parse_all(&raw.rdn.tie_breakers, "rdn.tie_breakers")?;
        let phone = match &raw.phone {
            None => Phone::default(),
            Some(p) => {
                let r = p.get_ref();
                Phone::parse(r.region.as_deref(), r.invalid.as_deref())
                    .map_err(|(key, m)| err(p.span(), &key, m))?
            }
        };
        let rdn_attribute = raw.rdn.attribute.get_ref().trim().to_string();
        let mut rules = Vec::new();
        for (target, spanned) in &raw.attributes {
            let key = format!("attributes.{target}");
            let r = spanned.get_ref();
            let e = |m: String| err(spanned.span(), &key, m);
            if target.eq_ignore_ascii_case(&rdn_attribute) {
                return Err(e(format!(
                    "{target} is the RDN attribute; it is set by [rdn], not here"
                )));
            }
            let kinds = [
                r.copy.is_some(),
                r.template.is_some(),
                r.first_of.is_some(),
                r.value.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(e(
                    "needs exactly one of copy, template, first_of, value".into()
                ));
            }
            let source = if let Some(c) = &r.copy {
                Source::Copy(c.trim().to_lowercase())
            } else if let Some(t) = &r.template {
                Source::FirstOf(vec![Template::parse(t).map_err(e)?])
            } else if let Some(ts) = &r.first_of {
                Source::FirstOf(
                    ts.iter()
                        .map(|t| Template::parse(t))
                        .collect::<Result<_, _>>()
                        .map_err(e)?,
                )
            } else {
                Source::Value(r.value.clone().unwrap_or_default())
            };
            let transforms = r
                .transform
                .iter()
                .map(|t| {
                    Transform::parse(t, phone).ok_or_else(|| {
                        e(format!(
                            "unknown transform \"{t}\" (trim, lower, upper, phone, local_part, alias)"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            let values = match r.values.as_deref() {
                None | Some("all") => Values::All,
                Some("first") => Values::First,
                Some("rest") => Values::Rest,
                Some(v) => return Err(e(format!("values = \"{v}\": use all, first or rest"))),
            };
            if values != Values::All && !matches!(source, Source::Copy(_)) {
                return Err(e("values applies to copy rules only".into()));
            }
            if r.max_length == Some(0) {
                return Err(e("max_length must be at least 1".into()));
            }
            rules.push(Rule {
                target: target.clone(),
                source,
                transforms,
                values,
                max_length: r.max_length,
            });
        }
        Ok(Mapping {
            object_class: raw.object_class,
            rdn_attribute,
            rdn,
            rdn_max_length: raw.rdn.max_length.max(1),
            tie_breakers,
            rules,
            hide: raw.hide.map(|h| (h.attribute.into_inner(), h.value)),
        })
    }

    /// The source attributes the mapping reads (lower-case).
    pub fn source_attributes(&self) -> std::collections::BTreeSet<String> {
        let mut templates: Vec<&Template> = self.rdn.iter().chain(&self.tie_breakers).collect();
        let mut out = std::collections::BTreeSet::new();
        for r in &self.rules {
            match &r.source {
                Source::Copy(a) => {
                    out.insert(a.clone());
                }
                Source::FirstOf(ts) => templates.extend(ts),
                Source::Value(_) => {}
            }
        }
        for t in templates {
            for p in &t.0 {
                if let Piece::Attr(a, _) = p {
                    out.insert(a.clone());
                }
            }
        }
        out
    }

    /// Where the mapping takes the values of the target attribute `target`
    /// (any case) from: one alternative per way it can get a value (a
    /// copy's attribute, or a template's placeholders, `anchor` among
    /// them), each with the source attributes it reads (lower-case); an
    /// empty alternative is a constant. A template yields a value when any
    /// of its placeholders does. `None` when the mapping does not write
    /// `target`. The RDN attribute comes from `rdn.first_of`; the `[hide]`
    /// attribute is a constant.
    pub fn sources_of(&self, target: &str) -> Option<Vec<Vec<String>>> {
        let placeholders = |t: &Template| -> Vec<String> {
            t.0.iter()
                .filter_map(|p| match p {
                    Piece::Attr(a, _) => Some(a.clone()),
                    Piece::Text(_) => None,
                })
                .collect()
        };
        if target.eq_ignore_ascii_case(&self.rdn_attribute) {
            return Some(self.rdn.iter().map(placeholders).collect());
        }
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.target.eq_ignore_ascii_case(target))
        {
            return Some(match &rule.source {
                Source::Copy(a) => vec![vec![a.clone()]],
                Source::FirstOf(ts) => ts.iter().map(placeholders).collect(),
                Source::Value(_) => vec![Vec::new()],
            });
        }
        self.hide
            .as_ref()
            .filter(|(a, _)| a.eq_ignore_ascii_case(target))
            .map(|_| vec![Vec::new()])
    }

    /// Maps one entry. `Err` names why the entry cannot become an object
    /// (no RDN value), which the caller journals.
    pub fn map(&self, entry: &SourceEntry) -> Result<Mapped, String> {
        let rdn_value = self
            .rdn
            .iter()
            .map(|t| trim_owned(clean_owned(t.render(entry))))
            .find(|v| !v.is_empty())
            .ok_or_else(|| {
                format!(
                    "no value for the RDN ({}): every template in rdn.first_of is empty",
                    self.rdn_attribute
                )
            })?;
        let plain = truncate(&rdn_value, self.rdn_max_length);
        let mut rdn_candidates = vec![plain.clone()];
        for tb in &self.tie_breakers {
            let suffix = clean_owned(tb.render(entry));
            if suffix.is_empty() {
                continue;
            }
            // Keep the suffix whole: shorten the name to make room for it.
            let room = self
                .rdn_max_length
                .saturating_sub(suffix.chars().count() + 1);
            let c = format!("{} {suffix}", truncate(&rdn_value, room));
            // A suffix longer than the limit itself is cut too: no candidate
            // may be longer than the target accepts.
            let c = truncate(c.trim_start(), self.rdn_max_length);
            if !c.is_empty() && !rdn_candidates.contains(&c) {
                rdn_candidates.push(c);
            }
        }
        let mut attrs = BTreeMap::new();
        for rule in &self.rules {
            let mut vals: Vec<String> = match &rule.source {
                Source::Copy(a) if rule.drops_invalid() => {
                    let valid: Vec<String> = entry
                        .values(a)
                        .iter()
                        .map(|v| rule.finish_value(v))
                        .filter(|v| !v.is_empty())
                        .collect();
                    rule.values.pick(&valid).to_vec()
                }
                Source::Copy(a) => rule
                    .values
                    .pick(entry.values(a))
                    .iter()
                    .map(|v| rule.finish_value(v))
                    .collect(),
                Source::FirstOf(ts) => ts
                    .iter()
                    .map(|t| t.render(entry))
                    .find(|v| !v.is_empty())
                    .map(|v| rule.finish_value(&v))
                    .into_iter()
                    .collect(),
                Source::Value(v) => vec![rule.finish_value(v)],
            };
            // AD rejects empty values and values equal but for case (which
            // a single value cannot be).
            if vals.len() <= 1 {
                vals.retain(|v| !v.is_empty());
            } else {
                let mut seen = std::collections::HashSet::new();
                vals.retain(|v| !v.is_empty() && seen.insert(v.to_lowercase()));
            }
            if !vals.is_empty() {
                attrs.insert(rule.target.clone(), vals);
            }
        }
        Ok(Mapped {
            rdn_value: plain,
            rdn_candidates,
            attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &[&str])]) -> SourceEntry {
        SourceEntry {
            anchor: "1b2c3d4e-0000-1111-2222-333344445555".into(),
            dn: "uid=1,ou=People,o=nhs".into(),
            org: "RX1".into(),
            attrs: pairs
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    fn mapping(text: &str) -> Mapping {
        let dir = std::env::temp_dir().join(format!("absync-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!("m{n}.toml"));
        std::fs::write(&p, text).unwrap();
        Mapping::load(&p).unwrap()
    }

    const M: &str = r#"
object_class = ["top", "contact"]
[rdn]
attribute = "cn"
first_of = ["{givenName} {sn}", "{uid}"]
max_length = 20
tie_breakers = ["({nhsOdsCode})", "({nhsOdsCode} {anchor:6})"]
[attributes.displayName]
template = "{givenName} {sn}"
[attributes.mail]
copy = "mail"
transform = ["trim", "lower"]
[attributes.telephoneNumber]
copy = "telephoneNumber"
values = "first"
transform = ["phone"]
[attributes.otherTelephone]
copy = "telephoneNumber"
values = "rest"
transform = ["phone"]
[attributes.title]
copy = "title"
max_length = 10
[attributes.company]
value = "NHS"
[attributes.info]
first_of = ["{description}", "Job: {nhsJobRole}"]
"#;

    #[test]
    fn maps_copy_template_constant_fallback_transforms_and_truncation() {
        let m = mapping(M);
        let e = entry(&[
            ("givenName", &["Siân"]),
            ("sn", &["O'Brien"]),
            ("mail", &["  Sian.OBrien@NHS.net "]),
            (
                "telephoneNumber",
                &["0161 496 0123", "+44 (161) 496-0124", "ext 42"],
            ),
            ("title", &["Associate Director of Nursing"]),
            ("nhsJobRole", &["R8000:Clinical"]),
        ]);
        let o = m.map(&e).unwrap();
        assert_eq!(o.rdn_value, "Siân O'Brien");
        assert_eq!(o.attrs["displayName"], vec!["Siân O'Brien"]);
        assert_eq!(o.attrs["mail"], vec!["sian.obrien@nhs.net"]);
        assert_eq!(o.attrs["telephoneNumber"], vec!["+441614960123"]);
        assert_eq!(o.attrs["otherTelephone"], vec!["+441614960124", "ext 42"]);
        assert_eq!(o.attrs["title"], vec!["Associate"]);
        assert_eq!(o.attrs["company"], vec!["NHS"]);
        assert_eq!(o.attrs["info"], vec!["Job: R8000:Clinical"]);
    }

    #[test]
    fn rdn_falls_back_truncates_and_offers_tie_breakers_that_fit() {
        let m = mapping(M);
        let o = m.map(&entry(&[("uid", &["0001234"])])).unwrap();
        assert_eq!(o.rdn_value, "0001234");
        assert!(!o.attrs.contains_key("displayName"));
        let e = entry(&[
            ("givenName", &["Gwenllïan"]),
            ("sn", &["Mac Giolla Phádraig"]),
            ("nhsOdsCode", &["RX1"]),
        ]);
        let o = m.map(&e).unwrap();
        assert_eq!(o.rdn_value, "Gwenllïan Mac Giolla");
        assert_eq!(
            o.rdn_candidates,
            vec![
                "Gwenllïan Mac Giolla".to_string(),
                "Gwenllïan Mac (RX1)".to_string(),
                "Gwenllï (RX1 1b2c3d)".to_string()
            ]
        );
        assert!(o.rdn_candidates.iter().all(|c| c.chars().count() <= 20));

        // A tie-breaker longer than the limit is cut, never overflows it.
        let long = M.replace("({nhsOdsCode})", "({title})");
        assert_ne!(long, M);
        let m = mapping(&long);
        let e = entry(&[
            ("givenName", &["Ann"]),
            ("sn", &["Lee"]),
            ("title", &["Associate Director of Nursing"]),
            ("nhsOdsCode", &["RX1"]),
        ]);
        let o = m.map(&e).unwrap();
        assert!(
            o.rdn_candidates
                .iter()
                .all(|c| c.chars().count() <= 20 && !c.starts_with(' ')),
            "{:?}",
            o.rdn_candidates
        );
        assert_eq!(o.rdn_candidates[1], "(Associate Director");
    }

    #[test]
    fn sources_of_names_what_each_target_attribute_reads() {
        let m = mapping(&format!(
            "{M}[hide]\nattribute = \"msExchHideFromAddressLists\"\nvalue = \"TRUE\"\n"
        ));
        let s = |t: &str| m.sources_of(t);
        assert_eq!(s("MAIL"), Some(vec![vec!["mail".to_string()]]));
        assert_eq!(
            s("info"),
            Some(vec![vec!["description".into()], vec!["nhsjobrole".into()]])
        );
        assert_eq!(
            s("displayName"),
            Some(vec![vec!["givenname".into(), "sn".into()]])
        );
        assert_eq!(s("company"), Some(vec![vec![]]));
        assert_eq!(
            s("cn"),
            Some(vec![
                vec!["givenname".into(), "sn".into()],
                vec!["uid".into()]
            ])
        );
        assert_eq!(s("msexchhidefromaddresslists"), Some(vec![vec![]]));
        assert_eq!(s("homePhone"), None);
    }

    #[test]
    fn no_rdn_value_is_an_error_naming_the_reason() {
        let m = mapping(M);
        let err = m.map(&entry(&[("mail", &["x@nhs.net"])])).unwrap_err();
        assert!(err.contains("no value for the RDN"), "{err}");
    }

    #[test]
    fn phone_numbers_follow_the_mappings_region_and_invalid_mode() {
        let e = entry(&[
            ("givenName", &["Ann"]),
            ("sn", &["Lee"]),
            (
                "telephoneNumber",
                &[
                    "0161-958807",
                    "+44 (0)161 496 0000",
                    "06 12 34 56 78",
                    "ext 42",
                ],
            ),
        ]);
        // No [phone]: read as British, invalid numbers kept as written.
        let o = mapping(M).map(&e).unwrap();
        assert_eq!(o.attrs["telephoneNumber"], vec!["0161-958807"]);
        assert_eq!(
            o.attrs["otherTelephone"],
            vec!["+441614960000", "06 12 34 56 78", "ext 42"]
        );
        // Dropped: the first valid number is the first.
        let o = mapping(&format!("{M}[phone]\ninvalid = \"drop\"\n"))
            .map(&e)
            .unwrap();
        assert_eq!(o.attrs["telephoneNumber"], vec!["+441614960000"]);
        assert!(!o.attrs.contains_key("otherTelephone"), "{o:?}");
        // Another region reads national numbers as that country's.
        let o = mapping(&format!("{M}[phone]\nregion = \"fr\"\n"))
            .map(&e)
            .unwrap();
        assert_eq!(
            o.attrs["otherTelephone"],
            vec!["+441614960000", "+33612345678", "ext 42"]
        );
        // Nothing valid: no attribute at all.
        let none = entry(&[("uid", &["1"]), ("telephoneNumber", &["0161-958807"])]);
        let o = mapping(&format!("{M}[phone]\ninvalid = \"drop\"\n"))
            .map(&none)
            .unwrap();
        assert!(!o.attrs.contains_key("telephoneNumber"), "{o:?}");
        assert!(!o.attrs.contains_key("otherTelephone"), "{o:?}");
    }

    #[test]
    fn phone_settings_errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("phone.toml");
        let head =
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{sn}\"]\n";
        for (tail, says) in [
            (
                "[phone]\nregion = \"UK\"\n",
                ":5: phone.region: unknown region \"UK\"",
            ),
            (
                "[phone]\ninvalid = \"delete\"\n",
                ":5: phone.invalid: invalid = \"delete\": use keep or drop",
            ),
            (
                "[phone]\nregoin = \"GB\"\n",
                ":6: regoin: unknown field `regoin`",
            ),
        ] {
            std::fs::write(&p, format!("{head}{tail}")).unwrap();
            let msg = Mapping::load(&p).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("{}{says}", p.display())), "{msg}");
        }
    }

    #[test]
    fn control_characters_and_case_duplicates_are_dropped() {
        let m = mapping(M);
        let e = entry(&[
            ("givenName", &["A\u{0}na"]),
            ("sn", &["Lee\nPark"]),
            ("telephoneNumber", &["x", "ABC", "abc"]),
        ]);
        let o = m.map(&e).unwrap();
        assert_eq!(o.rdn_value, "Ana Lee Park");
        assert_eq!(o.attrs["otherTelephone"], vec!["ABC"]);
    }

    #[test]
    fn bidi_controls_and_zero_width_characters_never_reach_a_name() {
        let m = mapping(M);
        let e = entry(&[
            ("givenName", &["\u{202E}nimdA"]),
            ("sn", &["Sm\u{200B}ith\u{2066}\u{FEFF}"]),
            ("title", &["Lead\u{200D} \u{061C}Nurse"]),
            ("telephoneNumber", &["01632 960123\u{2060}"]),
        ]);
        let o = m.map(&e).unwrap();
        assert_eq!(o.rdn_value, "nimdA Smith");
        for (attr, values) in &o.attrs {
            for v in values {
                assert!(!crate::text::has_invisible(v), "{attr}: {v:?}");
            }
        }
        assert_eq!(o.attrs["title"], vec!["Lead Nurse"]);
        // A joiner inside an emoji stays: it is part of the character.
        let e = entry(&[("givenName", &["Ana"]), ("sn", &["👩\u{200D}⚕"])]);
        assert_eq!(m.map(&e).unwrap().rdn_value, "Ana 👩\u{200D}⚕");
    }

    #[test]
    fn a_mapping_may_not_write_what_absyncs_safety_rests_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hostile.toml");
        let head =
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{sn}\"]\n\
                    [attributes.mail]\ncopy = \"mail\"\n";
        // Each hostile rule is named at its table's header, line 7; the
        // [hide] attribute at its own line, 8.
        for (tail, marker, key, says) in [
            (
                "[attributes.adminDescription]\nvalue = \"absync:someone-else\"\n",
                "adminDescription",
                "attributes.adminDescription",
                "adminDescription holds absync's ownership marker",
            ),
            (
                "[attributes.objectClass]\nvalue = \"user\"\n",
                "adminDescription",
                "attributes.objectClass",
                "objectClass says what the object is",
            ),
            (
                "[attributes.extensionAttribute15]\ncopy = \"uid\"\n",
                "extensionAttribute15",
                "attributes.extensionAttribute15",
                "extensionAttribute15 holds absync's ownership marker",
            ),
            (
                "[attributes.ADMINDESCRIPTION]\ncopy = \"uid\"\n",
                "extensionAttribute15",
                "attributes.ADMINDESCRIPTION",
                "ADMINDESCRIPTION is absync's default ownership marker",
            ),
            (
                "[attributes.userAccountControl]\nvalue = \"512\"\n",
                "adminDescription",
                "attributes.userAccountControl",
                "userAccountControl is not among the contact attributes absync may write: cn,",
            ),
            (
                "[hide]\nattribute = \"adminDescription\"\nvalue = \"x\"\n",
                "adminDescription",
                "hide.attribute",
                "adminDescription holds absync's ownership marker",
            ),
        ] {
            std::fs::write(&p, format!("{head}{tail}")).unwrap();
            let e = Mapping::load_for(&p, marker).unwrap_err();
            let msg = e.to_string();
            let line = if key == "hide.attribute" { 8 } else { 7 };
            assert!(
                msg.starts_with(&format!("{}:{line}: {key}: {says}", p.display())),
                "{msg}"
            );
        }
        // The RDN attribute too, on its own line.
        let rdn = head.replace("attribute = \"cn\"", "attribute = \"objectClass\"");
        std::fs::write(&p, rdn).unwrap();
        let msg = Mapping::load(&p).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}:3: rdn.attribute: objectClass", p.display())),
            "{msg}"
        );
        // The shipped mappings write only what is allowed.
        for shipped in ["nhs-to-ad-contact.toml", "nhs-to-ad-mail-contact.toml"] {
            let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("mappings")
                .join(shipped);
            Mapping::load_for(&file, "adminDescription").unwrap();
        }
        assert_eq!(forbidden_target("MAIL", "adminDescription"), None);
    }

    #[test]
    fn mapping_errors_name_file_line_and_key() {
        let dir = std::env::temp_dir().join(format!("absync-map-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(
            &p,
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{sn}\"]\n[attributes.mail]\ncopy = \"mail\"\ntransform = [\"shout\"]\n",
        )
        .unwrap();
        let msg = Mapping::load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml:") && msg.contains("attributes.mail"),
            "{msg}"
        );
        assert!(msg.contains("unknown transform \"shout\""), "{msg}");

        // An unknown key and a wrong type, each named with its line.
        std::fs::write(
            &p,
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{sn}\"]\n[attributes.mail]\ncopy = \"mail\"\nmax_lenght = 64\n",
        )
        .unwrap();
        let msg = Mapping::load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml:7") && msg.contains("max_lenght"),
            "{msg}"
        );
        std::fs::write(
            &p,
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{sn}\"]\nmax_length = \"sixty-four\"\n",
        )
        .unwrap();
        let msg = Mapping::load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml:5") && msg.contains("max_length"),
            "{msg}"
        );
    }
}
