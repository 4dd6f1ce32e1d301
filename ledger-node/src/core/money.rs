//! Assets and amounts: decimal strings on the wire, integer minor units inside.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::HashMap;

/// Minor units of an asset. Signed so that issuance accounts can go negative.
pub type Minor = i64;

/// ISO 4217 currencies whose minor unit is not 2; every other code listed in
/// `ISO_4217_SCALE_2` has scale 2.
const ISO_4217_SCALE_0: &[&str] =
    &["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"];
const ISO_4217_SCALE_3: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const ISO_4217_SCALE_4: &[&str] = &["CLF", "UYW"];
const ISO_4217_SCALE_2: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BMD", "BND", "BOB", "BRL", "BSD",
    "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB",
    "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD",
    "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU",
    "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR",
    "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD", "YER", "ZAR", "ZMW", "ZWL",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetSpec {
    pub scale: u32,
    /// Largest amount of one command, in minor units.
    pub max_amount: Minor,
}

/// Why an amount was refused; the caller turns it into `invalid_amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    NotDecimal,
    NotPositive,
    TooPrecise { scale: u32 },
    TooLarge { max: String },
}

impl std::fmt::Display for AmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmountError::NotDecimal => write!(f, "must be a decimal string like \"4.50\""),
            AmountError::NotPositive => write!(f, "must be greater than zero"),
            AmountError::TooPrecise { scale } => write!(f, "has more than {scale} decimal places"),
            AmountError::TooLarge { max } => write!(f, "is above the maximum of {max}"),
        }
    }
}

/// The assets a node knows: ISO 4217 built in, custom ones from config.
#[derive(Debug, Clone)]
pub struct Assets {
    specs: HashMap<String, AssetSpec>,
}

impl Assets {
    /// `max_major` gives the per-command maximum in major units for a code.
    pub fn new(custom: &[(String, u32)], max_major: impl Fn(&str) -> Decimal) -> Assets {
        let mut specs = HashMap::new();
        let builtin = [(ISO_4217_SCALE_0, 0), (ISO_4217_SCALE_2, 2), (ISO_4217_SCALE_3, 3), (ISO_4217_SCALE_4, 4)];
        let mut add = |code: &str, scale: u32| {
            let max = to_minor_unchecked(max_major(code), scale);
            specs.insert(code.to_string(), AssetSpec { scale, max_amount: max });
        };
        for (codes, scale) in builtin {
            for code in codes {
                add(code, scale);
            }
        }
        for (code, scale) in custom {
            add(code, *scale);
        }
        Assets { specs }
    }

    pub fn get(&self, code: &str) -> Option<AssetSpec> {
        self.specs.get(code).copied()
    }

    /// Takes an asset's scale as a journal records it, for reading a journal without its
    /// node's config. An asset already known keeps its scale.
    pub fn learn(&mut self, code: &str, scale: u32) {
        self.specs.entry(code.to_string()).or_insert(AssetSpec { scale, max_amount: Minor::MAX });
    }

    /// Parses a command amount for `asset`: > 0, no more places than the scale, at most max.
    pub fn parse_amount(&self, spec: AssetSpec, text: &str) -> Result<Minor, AmountError> {
        let value = parse_decimal(text)?;
        if value <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        let value = value.normalize();
        if value.scale() > spec.scale {
            return Err(AmountError::TooPrecise { scale: spec.scale });
        }
        let too_large = || AmountError::TooLarge { max: format_minor(spec.max_amount, spec.scale) };
        let minor = decimal_to_minor(value, spec.scale).ok_or_else(too_large)?;
        if minor > spec.max_amount {
            return Err(too_large());
        }
        Ok(minor)
    }
}

/// Strict decimal syntax: digits, optionally a dot and digits. No sign, exponent or spaces.
pub fn parse_decimal(text: &str) -> Result<Decimal, AmountError> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 28 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.is_none_or(digits) {
        return Err(AmountError::NotDecimal);
    }
    // `from_str` would round digits beyond the 96-bit mantissa; `from_str_exact` refuses them.
    Decimal::from_str_exact(text).map_err(|_| AmountError::NotDecimal)
}

fn decimal_to_minor(value: Decimal, scale: u32) -> Option<Minor> {
    let factor = Decimal::from_i128_with_scale(10i128.checked_pow(scale)?, 0);
    let scaled = value.checked_mul(factor)?;
    debug_assert!(scaled.fract().is_zero());
    scaled.to_i64()
}

fn to_minor_unchecked(value: Decimal, scale: u32) -> Minor {
    decimal_to_minor(value.trunc_with_scale(scale), scale).unwrap_or(Minor::MAX)
}

/// Minor units back to the wire's decimal string: `1250` at scale 2 is `"12.50"`.
pub fn format_minor(minor: Minor, scale: u32) -> String {
    Decimal::from_i128_with_scale(minor as i128, scale).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> Assets {
        Assets::new(&[("KWH".to_string(), 3)], |_| Decimal::from(1_000_000))
    }

    #[test]
    fn parses_minor_units_exactly() {
        let a = assets();
        let eur = a.get("EUR").unwrap();
        assert_eq!(a.parse_amount(eur, "12.50"), Ok(1250));
        assert_eq!(a.parse_amount(eur, "12.5"), Ok(1250));
        assert_eq!(a.parse_amount(eur, "12"), Ok(1200));
        assert_eq!(a.parse_amount(eur, "0.01"), Ok(1));
        assert_eq!(a.parse_amount(eur, "12.500"), Ok(1250), "trailing zeros lose nothing");
        assert_eq!(a.parse_amount(eur, "1000000"), Ok(100_000_000));
        let jpy = a.get("JPY").unwrap();
        assert_eq!(a.parse_amount(jpy, "500"), Ok(500));
        let bhd = a.get("BHD").unwrap();
        assert_eq!(a.parse_amount(bhd, "1.005"), Ok(1005));
        let kwh = a.get("KWH").unwrap();
        assert_eq!(a.parse_amount(kwh, "7.125"), Ok(7125));
    }

    #[test]
    fn refuses_instead_of_rounding() {
        let a = assets();
        let eur = a.get("EUR").unwrap();
        assert_eq!(a.parse_amount(eur, "12.505"), Err(AmountError::TooPrecise { scale: 2 }));
        assert_eq!(a.parse_amount(a.get("JPY").unwrap(), "1.5"), Err(AmountError::TooPrecise { scale: 0 }));
        assert_eq!(a.parse_amount(eur, "0"), Err(AmountError::NotPositive));
        assert_eq!(a.parse_amount(eur, "0.00"), Err(AmountError::NotPositive));
        for bad in ["-1", "+1", "1e3", " 1", "1.", ".5", "", "abc", "1,5", "NaN", "99999999999999999999999999999"] {
            assert!(a.parse_amount(eur, bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(a.parse_amount(eur, "1000000.01"), Err(AmountError::TooLarge { .. })));
        // More digits than the mantissa holds: refused, not rounded to 100.00 or 12.50.
        assert!(a.parse_amount(eur, "99.9999999999999999999999999999").is_err());
        assert!(a.parse_amount(eur, "12.5000000000000000000000000001").is_err());
    }

    #[test]
    fn formats_with_the_asset_scale() {
        assert_eq!(format_minor(1250, 2), "12.50");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(7, 0), "7");
        assert_eq!(format_minor(1005, 3), "1.005");
    }
}
