//! The mapping's `phone` transform: a telephone number in E.164
//! (`+441614960000`) when libphonenumber's data (the `phonenumber` crate)
//! says it is a valid number, read in the mapping's default region when it
//! has no international prefix; otherwise kept as written or dropped, as
//! the mapping's `[phone] invalid` says. Pure: no I/O.

use phonenumber::country::Id;
use phonenumber::Mode;

/// Longer than this (in characters), a value is not read as a number: it
/// is invalid, and the cost of reading it stays bounded. libphonenumber's
/// own limit is 250; a number with an extension fits in 40.
const MAX_INPUT: usize = 100;

/// What becomes of a value that is not a valid telephone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Written as the source has it (trimmed).
    Keep,
    /// Not written.
    Drop,
}

/// The `[phone]` settings of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phone {
    /// The region a number without an international prefix is read in.
    pub region: Id,
    pub invalid: Invalid,
}

impl Default for Phone {
    /// Numbers read as British; invalid ones kept as written.
    fn default() -> Phone {
        Phone {
            region: Id::GB,
            invalid: Invalid::Keep,
        }
    }
}

impl Phone {
    /// Reads `[phone] region` and `invalid` (either may be absent: GB and
    /// keep). `Err` names the key and says what would be accepted.
    pub fn parse(region: Option<&str>, invalid: Option<&str>) -> Result<Phone, (String, String)> {
        let mut out = Phone::default();
        if let Some(r) = region {
            out.region = r.trim().to_ascii_uppercase().parse::<Id>().map_err(|_| {
                (
                    "phone.region".to_string(),
                    format!(
                        "unknown region \"{r}\": use a two-letter region code such as \
                             \"GB\" (the United Kingdom), \"IE\" or \"FR\""
                    ),
                )
            })?;
        }
        if let Some(i) = invalid {
            out.invalid = match i {
                "keep" => Invalid::Keep,
                "drop" => Invalid::Drop,
                _ => {
                    return Err((
                        "phone.invalid".to_string(),
                        format!("invalid = \"{i}\": use keep or drop"),
                    ))
                }
            };
        }
        Ok(out)
    }

    /// The value the target gets: the number in E.164, or for an invalid
    /// one the value as written (trimmed) or nothing (empty), as the
    /// mapping says.
    pub fn apply(self, v: &str) -> String {
        match e164(v, self.region) {
            Some(n) => n,
            None if self.invalid == Invalid::Keep => v.trim().to_string(),
            None => String::new(),
        }
    }
}

/// `v` in E.164 if libphonenumber finds it a valid number, read in
/// `region` when it has no international prefix (`+44`, `0044`); a
/// national prefix written in brackets after the country code, as in
/// `+44 (0)161 496 0000`, is ignored. An extension (`ext 123`, `x123`)
/// follows the number as ` ext. 123`. `None` when it is not valid: not a
/// number, a number of the wrong length or in a range not allocated
/// (Ofcom's drama ranges `01632 960xxx` and `07700 900xxx` among them), or
/// longer than [`MAX_INPUT`] characters.
pub fn e164(v: &str, region: Id) -> Option<String> {
    let v = v.trim();
    if v.is_empty() || v.chars().nth(MAX_INPUT).is_some() {
        return None;
    }
    // The parser has panicked on malformed input in the past (rust-
    // phonenumber#43); source data is hostile, so a panic is "not valid".
    std::panic::catch_unwind(|| {
        let n = phonenumber::parse(Some(region), v).ok()?;
        if !n.is_valid() {
            return None;
        }
        let number = n.format().mode(Mode::E164).to_string();
        Some(match n.extension() {
            Some(ext) if !ext.is_empty() => format!("{number} ext. {}", ext.as_ref()),
            _ => number,
        })
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: Phone = Phone {
        region: Id::GB,
        invalid: Invalid::Keep,
    };
    const GB_DROP: Phone = Phone {
        region: Id::GB,
        invalid: Invalid::Drop,
    };

    /// Source value → what the target gets with `invalid = "keep"` and
    /// with `invalid = "drop"` (empty: not written).
    const CASES: &[(&str, &str, &str)] = &[
        // Valid British numbers, in the forms people write them.
        ("0161 496 0000", "+441614960000", "+441614960000"),
        ("0161-496-0000", "+441614960000", "+441614960000"),
        ("(0161) 496 0000", "+441614960000", "+441614960000"),
        ("+44 161 496 0000", "+441614960000", "+441614960000"),
        ("+44 (0)161 496 0000", "+441614960000", "+441614960000"),
        ("+44 (0) 161 496 0000", "+441614960000", "+441614960000"),
        ("+44 0161 496 0000", "+441614960000", "+441614960000"),
        ("0044 161 496 0000", "+441614960000", "+441614960000"),
        ("+44 (0)20 7946 0958", "+442079460958", "+442079460958"),
        ("020 7946 0958", "+442079460958", "+442079460958"),
        ("0800 123 4567", "+448001234567", "+448001234567"),
        ("07400 123456", "+447400123456", "+447400123456"),
        ("+44 7400 123456", "+447400123456", "+447400123456"),
        ("  0113 496 0123  ", "+441134960123", "+441134960123"),
        // The forms. 01632 960xxx and 07700 900xxx are Ofcom's
        // drama ranges, never allocated: libphonenumber finds them
        // invalid, so they are kept as written (or dropped), never turned
        // into a number labelled E.164.
        ("+44 (0)1632 952620", "+44 (0)1632 952620", ""),
        ("01632 960123", "01632 960123", ""),
        ("07700 900123", "07700 900123", ""),
        ("+44 7700 900123", "+44 7700 900123", ""),
        ("0044 1632 960123", "0044 1632 960123", ""),
        ("(01632) 960123", "(01632) 960123", ""),
        // Nine digits after 0161: too short for Manchester.
        ("0161-958807", "0161-958807", ""),
        ("+44161527438", "+44161527438", ""),
        // Extensions follow the number.
        (
            "0161 496 0000 ext 123",
            "+441614960000 ext. 123",
            "+441614960000 ext. 123",
        ),
        (
            "0161 496 0000 x123",
            "+441614960000 ext. 123",
            "+441614960000 ext. 123",
        ),
        (
            "0161 496 0000 ext. 4410",
            "+441614960000 ext. 4410",
            "+441614960000 ext. 4410",
        ),
        ("01632 960123 ext 123", "01632 960123 ext 123", ""),
        ("ext. 4410", "ext. 4410", ""),
        // Numbers of other countries, by their prefix.
        ("+1 202 555 0143", "+12025550143", "+12025550143"),
        ("+1 (202) 555-0143", "+12025550143", "+12025550143"),
        ("+33 6 12 34 56 78", "+33612345678", "+33612345678"),
        ("0033 6 12 34 56 78", "+33612345678", "+33612345678"),
        ("+353 87 123 4567", "+353871234567", "+353871234567"),
        ("+91 98765 43210", "+919876543210", "+919876543210"),
        // Nothing, and things that are not numbers.
        ("", "", ""),
        ("   ", "", ""),
        ("x", "x", ""),
        ("ABC", "ABC", ""),
        ("123", "123", ""),
        ("999", "999", ""),
        ("+", "+", ""),
        ("++44 ((0))", "++44 ((0))", ""),
        ("  2 22#:", "2 22#:", ""),
        ("Ring reception", "Ring reception", ""),
        (
            "0161 496 0000 or 0161 496 0001",
            "0161 496 0000 or 0161 496 0001",
            "",
        ),
    ];

    #[test]
    fn uk_and_international_forms_in_e164_and_invalid_ones_kept_or_dropped() {
        let mut wrong = Vec::new();
        for (input, keep, drop) in CASES {
            let (k, d) = (GB.apply(input), GB_DROP.apply(input));
            if k != *keep || d != *drop {
                wrong.push(format!(
                    "{input:?}: keep {k:?} (want {keep:?}), drop {d:?} (want {drop:?})"
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn what_is_written_as_e164_is_e164() {
        for (input, keep, _) in CASES {
            if keep.starts_with('+') && *keep != input.trim() {
                let number = keep.split(" ext. ").next().unwrap();
                let digits = &number[1..];
                assert!(
                    digits.chars().all(|c| c.is_ascii_digit()) && (8..=15).contains(&digits.len()),
                    "{input:?} -> {keep:?}"
                );
            }
        }
    }

    #[test]
    fn the_region_reads_numbers_without_a_prefix() {
        let fr = Phone::parse(Some("fr"), None).unwrap();
        assert_eq!(fr.apply("06 12 34 56 78"), "+33612345678");
        assert_eq!(fr.apply("+44 161 496 0000"), "+441614960000");
        assert_eq!(GB.apply("06 12 34 56 78"), "06 12 34 56 78");
        assert_eq!(Phone::parse(None, None).unwrap(), Phone::default());
        assert_eq!(Phone::parse(Some("GB"), Some("drop")).unwrap(), GB_DROP);
        let (key, msg) = Phone::parse(Some("UK"), None).unwrap_err();
        assert_eq!(key, "phone.region");
        assert!(
            msg.contains("unknown region \"UK\"") && msg.contains("\"GB\""),
            "{msg}"
        );
        let (key, msg) = Phone::parse(None, Some("remove")).unwrap_err();
        assert_eq!(key, "phone.invalid");
        assert!(msg.contains("use keep or drop"), "{msg}");
    }

    #[test]
    fn very_long_input_is_invalid_and_cheap() {
        for long in [
            "0".repeat(100_000),
            "0161 496 0000 ".repeat(10_000),
            "(".repeat(100_000),
            format!("0161 496 0000 ext {}", "1".repeat(100_000)),
        ] {
            assert_eq!(GB_DROP.apply(&long), "");
            assert_eq!(GB.apply(&long), long.trim());
        }
        // At the limit a value is still read; one character more, not.
        let spaced = |n: usize| format!("0161{}496 0000", " ".repeat(n - 12));
        assert_eq!(spaced(MAX_INPUT).chars().count(), MAX_INPUT);
        assert_eq!(GB.apply(&spaced(MAX_INPUT)), "+441614960000");
        assert_eq!(GB.apply(&spaced(MAX_INPUT + 1)), spaced(MAX_INPUT + 1));
    }

    proptest::proptest! {
        /// Any text, phone-like or not: no panic, and the value written is
        /// a number in E.164 (perhaps with an extension) or the input as
        /// written (keep) or nothing (drop).
        #[test]
        fn any_value_is_e164_or_as_written(
            v in proptest::prop_oneof![
                "[0-9 +()x.#*-]{0,30}",
                "(\\+44|0044|0)? ?\\(?[0-9]{1,5}\\)? ?[0-9 -]{3,12}( (ext|x) ?[0-9]{1,6})?",
                proptest::prelude::any::<String>(),
            ]
        ) {
            let (k, d) = (GB.apply(&v), GB_DROP.apply(&v));
            if d.is_empty() {
                proptest::prop_assert_eq!(k, v.trim());
            } else {
                proptest::prop_assert_eq!(&k, &d);
                let number = d.split(" ext. ").next().unwrap_or("");
                proptest::prop_assert!(number.starts_with('+'), "{:?} -> {:?}", v, d);
                proptest::prop_assert!(number[1..].chars().all(|c| c.is_ascii_digit()), "{:?}", d);
            }
        }
    }

    /// The cost of the transform, printed (run with `--nocapture`): the
    /// first use (libphonenumber's metadata loads) and 10,000 numbers.
    #[test]
    fn cost_per_number() {
        let t = std::time::Instant::now();
        let _ = e164("0161 496 0000", Id::GB);
        let first = t.elapsed();
        let numbers: Vec<String> = (0..10_000)
            .map(|i| match i % 5 {
                0 => format!("0161 496 {:04}", i % 1000),
                1 => format!("+44 (0)20 7946 {:04}", i % 1000),
                2 => format!("07{} {:06}", 400 + i % 500, i),
                3 => format!("01632 {:06}", 100_000 + i),
                _ => format!("+1 202 555 {:04}", i),
            })
            .collect();
        let t = std::time::Instant::now();
        let valid = numbers.iter().filter_map(|n| e164(n, Id::GB)).count();
        let all = t.elapsed();
        println!(
            "phone: first use {first:?}; 10,000 numbers in {all:?} ({:?} each, {valid} valid)",
            all / 10_000
        );
        assert!(valid >= 6_000, "{valid}");
    }
}
