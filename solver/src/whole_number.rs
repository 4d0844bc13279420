//! Numbers as messages show them; pure, no IO.

/// A number as a message shows it: plain when short, otherwise in exponent form (`1e308`, never 309
/// digits).
pub(crate) fn compact(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 10 {
        plain
    } else {
        format!("{x:e}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn compact_numbers_never_spell_out_hundreds_of_digits() {
        assert_eq!(super::compact(855.5), "855.5");
        assert_eq!(super::compact(1e308), "1e308");
        assert_eq!(super::compact(1e-310), "1e-310");
        assert_eq!(super::compact(1e15), "1e15");
        assert_eq!(super::compact(10_000_000.0), "10000000");
    }
}
