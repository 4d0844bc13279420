//! The carbon-forecast policy of a budget at a time: the spec validated, the band a forecast puts
//! the budget in, whether the last good forecast is still current, the `maxSlowdown` in force and
//! when it next changes, applied to a translation. Pure: the time and the poller's findings are
//! arguments.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_crds::{
    CarbonForecast, DEFAULT_FORECAST_POLL_SECONDS, DEFAULT_FORECAST_STALE_AFTER_SECONDS,
    ForecastFormat, PowerBudget, SecretKeyRef, SlowdownBand,
};

use super::forecast::Forecast;
use super::with_signal;
use crate::plan::reasons;
use crate::plan::translate::{BudgetIssue, Translation};

/// A budget's `spec.signals.carbonForecast`, validated, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPolicy {
    pub url: String,
    pub format: ForecastFormat,
    pub poll: SignedDuration,
    pub stale_after: SignedDuration,
    pub token: Option<SecretKeyRef>,
    /// Sorted by threshold, slowdowns not decreasing.
    pub bands: Vec<SlowdownBand>,
}

impl ForecastPolicy {
    /// The spec validated as the CRD's schema does; `Err` says what is wrong.
    pub fn from_spec(spec: &CarbonForecast) -> Result<ForecastPolicy, String> {
        if !(spec.url.starts_with("http://") || spec.url.starts_with("https://")) {
            return Err(format!(
                "url {:?} does not start with http:// or https://",
                spec.url
            ));
        }
        let poll = spec.poll_seconds.unwrap_or(DEFAULT_FORECAST_POLL_SECONDS);
        let stale_after = spec
            .stale_after_seconds
            .unwrap_or(DEFAULT_FORECAST_STALE_AFTER_SECONDS);
        if poll == 0 || stale_after < poll {
            return Err(format!(
                "pollSeconds {poll} must be positive and at most staleAfterSeconds {stale_after}"
            ));
        }
        if spec.bands.is_empty() {
            return Err("bands is empty".to_owned());
        }
        for band in &spec.bands {
            if !(band.above_grams_per_kwh.is_finite() && band.above_grams_per_kwh >= 0.0) {
                return Err(format!(
                    "aboveGramsPerKWh {} is not a finite number at least 0",
                    band.above_grams_per_kwh
                ));
            }
            if !(0.0..1.0).contains(&band.max_slowdown) {
                return Err(format!(
                    "band maxSlowdown {} is outside [0, 1)",
                    band.max_slowdown
                ));
            }
        }
        if spec.bands.windows(2).any(|w| {
            w[1].above_grams_per_kwh < w[0].above_grams_per_kwh
                || w[1].max_slowdown < w[0].max_slowdown
        }) {
            return Err(
                "bands must be sorted by aboveGramsPerKWh with maxSlowdown not decreasing"
                    .to_owned(),
            );
        }
        Ok(ForecastPolicy {
            url: spec.url.clone(),
            format: spec.format,
            poll: SignedDuration::from_secs(i64::from(poll)),
            stale_after: SignedDuration::from_secs(i64::from(stale_after)),
            token: spec.token_secret_ref.clone(),
            bands: spec.bands.clone(),
        })
    }
}

/// The `maxSlowdown` the bands give an intensity: the largest of the bands whose threshold is
/// below it; `None` when it is below every band.
pub fn band_slowdown(bands: &[SlowdownBand], grams_per_kwh: f64) -> Option<f64> {
    bands
        .iter()
        .filter(|b| b.above_grams_per_kwh < grams_per_kwh)
        .map(|b| b.max_slowdown)
        .reduce(f64::max)
}

/// Why the last fetch of a source gave no forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// No answer, an HTTP error status, or no token.
    Unreachable,
    /// An answer that is not a forecast of its format.
    Invalid,
}

/// What the poller knows of one budget's source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceState {
    /// The policy it polls for; a budget whose policy changed starts afresh.
    pub policy: ForecastPolicy,
    /// The last forecast fetched and parsed, with when it was fetched.
    pub last_good: Option<(Arc<Forecast>, Timestamp)>,
    /// When the last fetch started.
    pub last_attempt: Option<Timestamp>,
    /// The last fetch's failure, and its message; `None` after a success.
    pub failure: Option<(FetchFailure, String)>,
}

impl SourceState {
    pub fn new(policy: ForecastPolicy) -> SourceState {
        SourceState {
            policy,
            last_good: None,
            last_attempt: None,
            failure: None,
        }
    }

    /// Whether a fetch is due at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        self.last_attempt
            .is_none_or(|last| now.duration_since(last) >= self.policy.poll)
    }
}

/// The `SignalsAvailable` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// A forecast fetched within `staleAfterSeconds` covers now.
    Current,
    /// No fetch has finished yet.
    Pending,
    /// The last good forecast is older than `staleAfterSeconds` or ends before now.
    Stale,
    /// Nothing good fetched, and the last fetch got no answer.
    Unreachable,
    /// Nothing good fetched, and the last answer was not a forecast; or the spec is invalid.
    Invalid,
}

impl Availability {
    /// The condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Availability::Current => reasons::FORECAST_CURRENT,
            Availability::Pending => reasons::FORECAST_PENDING,
            Availability::Stale => reasons::FORECAST_STALE,
            Availability::Unreachable => reasons::FORECAST_UNREACHABLE,
            Availability::Invalid => reasons::FORECAST_INVALID,
        }
    }
}

/// A budget's carbon forecast at one time, for its plan, status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReading {
    pub availability: Availability,
    /// For the condition.
    pub message: String,
    /// The current forecast's intensity now.
    pub grams_per_kwh: Option<f64>,
    /// Its band's `maxSlowdown`.
    pub band_slowdown: Option<f64>,
    /// The `maxSlowdown` in force: the larger of the band's and the spec's efficiency.
    pub max_slowdown: Option<f64>,
    pub generated_at: Option<Timestamp>,
    pub fetched_at: Option<Timestamp>,
    /// The next instant the band in force changes or the forecast stops being current.
    pub next_change: Option<Timestamp>,
}

/// The forecast policy of a budget at `now`: `spec_slowdown` is its valid `efficiency.maxSlowdown`.
pub fn assess(
    policy: &ForecastPolicy,
    state: Option<&SourceState>,
    spec_slowdown: Option<f64>,
    now: Timestamp,
) -> SignalReading {
    let fallback = |availability: Availability, message: String| SignalReading {
        availability,
        message: format!("{message}; {}", fallback_words(spec_slowdown)),
        grams_per_kwh: None,
        band_slowdown: None,
        max_slowdown: spec_slowdown,
        generated_at: state
            .and_then(|s| s.last_good.as_ref())
            .map(|(f, _)| f.generated_at),
        fetched_at: state.and_then(|s| s.last_good.as_ref()).map(|(_, at)| *at),
        next_change: None,
    };
    let failure = state.and_then(|s| s.failure.as_ref());
    let Some((forecast, fetched_at)) = state.and_then(|s| s.last_good.as_ref()) else {
        return match failure {
            None => fallback(
                Availability::Pending,
                format!("no forecast fetched from {} yet", policy.url),
            ),
            Some((FetchFailure::Unreachable, message)) => {
                fallback(Availability::Unreachable, message.clone())
            }
            Some((FetchFailure::Invalid, message)) => {
                fallback(Availability::Invalid, message.clone())
            }
        };
    };
    let last_failure = failure.map_or(String::new(), |(_, m)| format!(" (last fetch: {m})"));
    let kept_until = fetched_at.checked_add(policy.stale_after).ok();
    if kept_until.is_none_or(|until| now >= until) {
        return fallback(
            Availability::Stale,
            format!(
                "the last good forecast was fetched at {fetched_at}, over {} s ago{last_failure}",
                policy.stale_after.as_secs()
            ),
        );
    }
    let Some(grams) = forecast.intensity_at(now) else {
        return fallback(
            Availability::Stale,
            format!(
                "the forecast generated at {} does not cover {now}{last_failure}",
                forecast.generated_at
            ),
        );
    };
    let band = band_slowdown(&policy.bands, grams);
    let max_slowdown = match (band, spec_slowdown) {
        (Some(b), Some(s)) => Some(b.max(s)),
        (b, s) => b.or(s),
    };
    // The band changes at the first later point in another band; the forecast stops being current
    // where it ends or goes stale.
    let band_change = forecast
        .points
        .iter()
        .filter(|p| p.at > now)
        .find(|p| band_slowdown(&policy.bands, p.grams_per_kwh) != band)
        .map(|p| p.at);
    let next_change = [band_change, forecast.end(), kept_until]
        .into_iter()
        .flatten()
        .min();
    SignalReading {
        availability: Availability::Current,
        message: format!(
            "{grams:.0} gCO2eq/kWh from the forecast generated at {}: {}{last_failure}",
            forecast.generated_at,
            match band {
                Some(b) => format!("band maxSlowdown {b}"),
                None => "below every band".to_owned(),
            }
        ),
        grams_per_kwh: Some(grams),
        band_slowdown: band,
        max_slowdown,
        generated_at: Some(forecast.generated_at),
        fetched_at: Some(*fetched_at),
        next_change,
    }
}

fn fallback_words(spec_slowdown: Option<f64>) -> String {
    match spec_slowdown {
        Some(s) => format!("planned with spec.efficiency.maxSlowdown {s}"),
        None => "planned without an efficiency policy".to_owned(),
    }
}

/// Applies every budget's carbon forecast to `translation` at `now`: the `maxSlowdown` in force
/// replaces the spec's in its facts and problem, its reading is kept in its facts, its next change
/// joins the translation's next transition, and an invalid spec becomes an `InvalidSignals` issue
/// (the budget is planned on its spec's efficiency alone).
pub fn apply(
    translation: &mut Translation,
    budgets: &[Arc<PowerBudget>],
    sources: &BTreeMap<String, SourceState>,
    now: Timestamp,
) {
    for (name, spec) in with_signal(budgets, |s| s.carbon_forecast.as_ref()) {
        let Some(facts) = translation.budgets.get_mut(&name) else {
            continue;
        };
        let reading = match ForecastPolicy::from_spec(spec) {
            Err(message) => {
                facts.issues.push(BudgetIssue {
                    reason: reasons::INVALID_SIGNALS,
                    message: format!("signals.carbonForecast: {message}; the forecast is not used"),
                });
                SignalReading {
                    availability: Availability::Invalid,
                    message: format!(
                        "signals.carbonForecast is invalid: {message}; {}",
                        fallback_words(facts.max_slowdown)
                    ),
                    grams_per_kwh: None,
                    band_slowdown: None,
                    max_slowdown: facts.max_slowdown,
                    generated_at: None,
                    fetched_at: None,
                    next_change: None,
                }
            }
            Ok(policy) => {
                // A state of another policy (an edited spec not polled yet) says nothing of this one.
                let state = sources.get(&name).filter(|s| s.policy == policy);
                assess(&policy, state, facts.max_slowdown, now)
            }
        };
        let (max_slowdown, next_change) = (reading.max_slowdown, reading.next_change);
        facts.signals = Some(reading);
        translation.set_max_slowdown(&name, max_slowdown);
        translation.wake_at(next_change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::forecast::ForecastPoint;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    fn band(above: f64, max_slowdown: f64) -> SlowdownBand {
        SlowdownBand {
            above_grams_per_kwh: above,
            max_slowdown,
        }
    }

    fn spec() -> CarbonForecast {
        CarbonForecast {
            url: "https://api.watttime.org/v3/forecast?region=CAISO_NORTH".to_owned(),
            format: ForecastFormat::WattTime,
            poll_seconds: Some(300),
            stale_after_seconds: Some(3600),
            token_secret_ref: None,
            bands: vec![band(200.0, 0.02), band(400.0, 0.05), band(600.0, 0.1)],
        }
    }

    /// Points every 5 minutes from 10:00 at these intensities.
    fn forecast(values: &[f64]) -> Arc<Forecast> {
        let start = at("2026-05-03T10:00:00Z");
        Arc::new(Forecast {
            generated_at: start,
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| ForecastPoint {
                    at: start
                        .checked_add(SignedDuration::from_mins(5 * i as i64))
                        .expect("time"),
                    grams_per_kwh: *v,
                })
                .collect(),
            period: SignedDuration::from_mins(5),
        })
    }

    fn fetched(values: &[f64], fetched_at: &str) -> SourceState {
        SourceState {
            last_good: Some((forecast(values), at(fetched_at))),
            last_attempt: Some(at(fetched_at)),
            ..SourceState::new(ForecastPolicy::from_spec(&spec()).expect("valid"))
        }
    }

    #[test]
    fn a_higher_intensity_buys_the_largest_slowdown_whose_threshold_is_below_it() {
        let bands = spec().bands;
        assert_eq!(band_slowdown(&bands, 150.0), None);
        assert_eq!(band_slowdown(&bands, 200.0), None, "strictly above");
        assert_eq!(band_slowdown(&bands, 200.5), Some(0.02));
        assert_eq!(band_slowdown(&bands, 599.0), Some(0.05));
        assert_eq!(band_slowdown(&bands, 900.0), Some(0.1));
    }

    #[test]
    fn the_band_in_force_is_the_larger_of_the_bands_and_the_specs_slowdown() {
        let policy = ForecastPolicy::from_spec(&spec()).expect("valid");
        let state = fetched(&[450.0, 450.0, 700.0, 100.0], "2026-05-03T10:01:00Z");
        let now = at("2026-05-03T10:02:00Z");
        let reading = assess(&policy, Some(&state), Some(0.03), now);
        assert_eq!(reading.availability, Availability::Current);
        assert_eq!(reading.grams_per_kwh, Some(450.0));
        assert_eq!(reading.band_slowdown, Some(0.05));
        assert_eq!(reading.max_slowdown, Some(0.05));
        assert_eq!(
            reading.next_change,
            Some(at("2026-05-03T10:10:00Z")),
            "the 700 g point is the next band"
        );
        let tighter = assess(&policy, Some(&state), Some(0.08), now);
        assert_eq!(tighter.max_slowdown, Some(0.08), "signals never lower it");
        let clean = assess(&policy, Some(&state), None, at("2026-05-03T10:16:00Z"));
        assert_eq!(
            (clean.band_slowdown, clean.max_slowdown),
            (None, None),
            "below every band and no spec policy: the max-throughput plan"
        );
        assert_eq!(
            clean.next_change,
            Some(at("2026-05-03T10:20:00Z")),
            "its end"
        );
    }

    #[test]
    fn a_failing_source_keeps_the_last_good_forecast_until_stale_after_then_falls_back() {
        let policy = ForecastPolicy::from_spec(&spec()).expect("valid");
        let mut state = fetched(&[700.0; 24], "2026-05-03T10:00:00Z");
        state.failure = Some((FetchFailure::Unreachable, "connection refused".to_owned()));
        state.last_attempt = Some(at("2026-05-03T10:55:00Z"));
        let kept = assess(
            &policy,
            Some(&state),
            Some(0.02),
            at("2026-05-03T10:59:59Z"),
        );
        assert_eq!(kept.availability, Availability::Current);
        assert_eq!(kept.max_slowdown, Some(0.1));
        assert!(
            kept.message.contains("connection refused"),
            "{}",
            kept.message
        );
        assert_eq!(
            kept.next_change,
            Some(at("2026-05-03T11:00:00Z")),
            "staleness"
        );
        let stale = assess(
            &policy,
            Some(&state),
            Some(0.02),
            at("2026-05-03T11:00:00Z"),
        );
        assert_eq!(stale.availability, Availability::Stale);
        assert_eq!(stale.max_slowdown, Some(0.02));
        assert_eq!(stale.grams_per_kwh, None);
        assert_eq!(stale.fetched_at, Some(at("2026-05-03T10:00:00Z")));
        let past_its_end = fetched(&[700.0], "2026-05-03T10:00:00Z");
        let ended = assess(
            &policy,
            Some(&past_its_end),
            None,
            at("2026-05-03T10:06:00Z"),
        );
        assert_eq!(
            (ended.availability, ended.max_slowdown),
            (Availability::Stale, None)
        );
    }

    #[test]
    fn without_a_good_forecast_the_reason_says_why() {
        let policy = ForecastPolicy::from_spec(&spec()).expect("valid");
        let now = at("2026-05-03T10:00:00Z");
        assert_eq!(
            assess(&policy, None, None, now).availability,
            Availability::Pending
        );
        for (failure, availability) in [
            (FetchFailure::Unreachable, Availability::Unreachable),
            (FetchFailure::Invalid, Availability::Invalid),
        ] {
            let state = SourceState {
                failure: Some((failure, "why".to_owned())),
                last_attempt: Some(now),
                ..SourceState::new(policy.clone())
            };
            let reading = assess(&policy, Some(&state), Some(0.01), now);
            assert_eq!(reading.availability, availability);
            assert_eq!(reading.max_slowdown, Some(0.01));
            assert_eq!(reading.next_change, None);
        }
    }

    #[test]
    fn a_source_is_polled_again_after_poll_seconds() {
        let state = fetched(&[1.0], "2026-05-03T10:00:00Z");
        assert!(!state.due(at("2026-05-03T10:04:59Z")));
        assert!(state.due(at("2026-05-03T10:05:00Z")));
        assert!(SourceState::new(state.policy.clone()).due(at("2026-05-03T10:00:00Z")));
    }

    #[test]
    fn invalid_specs_are_refused_with_what_is_wrong() {
        type Edit = fn(&mut CarbonForecast);
        let cases: [(Edit, &str); 5] = [
            (|s| s.url = "ftp://x".to_owned(), "http"),
            (|s| s.stale_after_seconds = Some(10), "staleAfterSeconds"),
            (|s| s.bands.clear(), "empty"),
            (|s| s.bands[1].max_slowdown = 1.0, "[0, 1)"),
            (|s| s.bands.swap(0, 2), "sorted"),
        ];
        for (edit, words) in cases {
            let mut bad = spec();
            edit(&mut bad);
            let error = ForecastPolicy::from_spec(&bad).expect_err(words);
            assert!(error.contains(words), "{error}");
        }
        assert_eq!(
            ForecastPolicy::from_spec(&CarbonForecast {
                poll_seconds: None,
                stale_after_seconds: None,
                ..spec()
            })
            .map(|p| (p.poll.as_secs(), p.stale_after.as_secs())),
            Ok((300, 3600))
        );
    }

    #[test]
    fn apply_plans_each_budget_with_its_own_forecast_and_names_an_invalid_spec() {
        use crate::plan::translate::tests::{budget, two_node_fleet};
        use serde_json::json;
        let carbon = |bands: serde_json::Value| {
            json!({"carbonForecast": {"url": spec().url, "format": "WattTime",
                                      "pollSeconds": 300, "staleAfterSeconds": 3600, "bands": bands}})
        };
        let budgets = [
            budget(
                "facility",
                json!({"capWatts": 30000.0, "efficiency": {"maxSlowdown": 0.02},
                       "signals": carbon(json!([{"aboveGramsPerKWh": 200, "maxSlowdown": 0.05}]))}),
            ),
            budget(
                "rack",
                json!({"capWatts": 20000.0, "parent": "facility", "nodeSelector": {},
                       "signals": carbon(json!([{"aboveGramsPerKWh": 200, "maxSlowdown": 1.5}]))}),
            ),
        ];
        let mut translation = two_node_fleet(&budgets);
        let now = at("2026-11-28T12:00:00Z");
        let policy = ForecastPolicy::from_spec(
            budgets[0]
                .spec
                .signals
                .as_ref()
                .and_then(|s| s.carbon_forecast.as_ref())
                .expect("spec"),
        )
        .expect("valid");
        let mut facility = SourceState::new(policy);
        let start = at("2026-11-28T11:59:00Z");
        facility.last_good = Some((
            Arc::new(Forecast {
                generated_at: start,
                points: vec![ForecastPoint {
                    at: start,
                    grams_per_kwh: 480.0,
                }],
                period: SignedDuration::from_mins(30),
            }),
            start,
        ));
        let sources = BTreeMap::from([("facility".to_owned(), facility)]);
        apply(&mut translation, &budgets, &sources, now);
        let planned = |name: &str| {
            translation
                .problem
                .budgets
                .iter()
                .find(|b| b.name == name)
                .and_then(|b| b.max_slowdown)
        };
        assert_eq!(planned("facility"), Some(0.05));
        assert_eq!(translation.budgets["facility"].max_slowdown, Some(0.05));
        assert_eq!(
            translation.next_transition,
            Some(at("2026-11-28T12:29:00Z")),
            "the forecast's end is a transition"
        );
        let rack = &translation.budgets["rack"];
        assert_eq!(
            planned("rack"),
            None,
            "a child does not inherit its parent's forecast"
        );
        assert_eq!(rack.issues[0].reason, reasons::INVALID_SIGNALS);
        assert_eq!(
            rack.signals.as_ref().map(|r| r.availability),
            Some(Availability::Invalid)
        );
    }
}
