//! A budget's OpenADR 3.1 program read as what it means for the budget: `IMPORT_CAPACITY_LIMIT`
//! intervals and mapped `SIMPLE` levels become schedule windows (caps), `GHG` and `PRICE` values a
//! `maxSlowdown`; whether the VTN still answers; both applied around translation. Pure: the time and
//! the poller's findings are arguments.
//!
//! What the VTN said last stays in force while it does not answer: an event that lowers a cap is
//! only lifted by the VTN ending or withdrawing it, never by losing contact.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_crds::{
    DEFAULT_OPENADR_POLL_SECONDS, DEFAULT_OPENADR_REPORT_SECONDS, DemandResponseEvent,
    DemandResponseStatus, OpenAdrProgram, PowerBudget, PriceBand, ScheduleWindow, SimpleLevel,
    SlowdownBand,
};
use kube::ResourceExt;
use openleadr_wire::Unit;
use openleadr_wire::event::{Event, EventType};
use openleadr_wire::values_map::Value;

use super::with_signal;
use crate::plan::reasons;
use crate::plan::status::kube_time;
use crate::plan::translate::{BudgetIssue, Translation};

/// An interval this long or longer (OpenADR writes `P9999Y`) lasts until the VTN ends the event.
const OPEN_ENDED_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// A budget's `spec.signals.openadr`, validated, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramPolicy {
    pub vtn_url: String,
    pub token_url: String,
    pub program_name: String,
    pub ven_name: String,
    pub credentials_secret: String,
    pub poll: SignedDuration,
    pub report_every: SignedDuration,
    pub simple_levels: Vec<SimpleLevel>,
    pub ghg_bands: Vec<SlowdownBand>,
    pub price_bands: Vec<PriceBand>,
}

impl ProgramPolicy {
    /// The spec validated as the CRD's schema does; `Err` says what is wrong.
    pub fn from_spec(spec: &OpenAdrProgram) -> Result<ProgramPolicy, String> {
        let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !http(&spec.vtn_url) {
            return Err(format!(
                "vtnUrl {:?} does not start with http:// or https://",
                spec.vtn_url
            ));
        }
        let vtn_url = if spec.vtn_url.ends_with('/') {
            spec.vtn_url.clone()
        } else {
            format!("{}/", spec.vtn_url)
        };
        let token_url = match &spec.token_url {
            Some(url) if http(url) => url.clone(),
            Some(url) => {
                return Err(format!(
                    "tokenUrl {url:?} does not start with http:// or https://"
                ));
            }
            None => default_token_url(&vtn_url),
        };
        for (what, bands) in [
            (
                "ghgBands",
                spec.ghg_bands
                    .iter()
                    .map(|b| (b.above_grams_per_kwh, b.max_slowdown))
                    .collect::<Vec<_>>(),
            ),
            (
                "priceBands",
                spec.price_bands
                    .iter()
                    .map(|b| (b.above_price, b.max_slowdown))
                    .collect(),
            ),
        ] {
            if bands
                .iter()
                .any(|(above, slowdown)| !above.is_finite() || !(0.0..1.0).contains(slowdown))
            {
                return Err(format!(
                    "{what} need finite thresholds and maxSlowdown in [0, 1)"
                ));
            }
            if bands.windows(2).any(|w| w[1].0 < w[0].0 || w[1].1 < w[0].1) {
                return Err(format!(
                    "{what} must be sorted by threshold with maxSlowdown not decreasing"
                ));
            }
        }
        if let Some(level) = spec
            .simple_levels
            .iter()
            .find(|l| !(l.cap_watts.is_finite() && l.cap_watts >= 0.0))
        {
            return Err(format!(
                "simpleLevels: level {} has capWatts {}",
                level.level, level.cap_watts
            ));
        }
        let seconds = |value: Option<u32>, default: u32| {
            SignedDuration::from_secs(i64::from(value.unwrap_or(default).max(1)))
        };
        Ok(ProgramPolicy {
            vtn_url,
            token_url,
            program_name: spec.program_name.clone(),
            ven_name: spec.ven_name.clone(),
            credentials_secret: spec.credentials_secret.clone(),
            poll: seconds(spec.poll_seconds, DEFAULT_OPENADR_POLL_SECONDS),
            report_every: seconds(spec.report_seconds, DEFAULT_OPENADR_REPORT_SECONDS),
            simple_levels: spec.simple_levels.clone(),
            ghg_bands: spec.ghg_bands.clone(),
            price_bands: spec.price_bands.clone(),
        })
    }
}

/// `/auth/token` on the VTN's scheme, host and port, where the OpenLEADR VTN issues tokens.
fn default_token_url(vtn_url: &str) -> String {
    let after_scheme = vtn_url.find("://").map_or(0, |i| i + 3);
    let host_end = vtn_url[after_scheme..]
        .find('/')
        .map_or(vtn_url.len(), |i| after_scheme + i);
    format!("{}/auth/token", &vtn_url[..host_end])
}

/// What the poller knows of one budget's program.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramState {
    /// The policy it polls for; a budget whose policy changed starts afresh.
    pub policy: ProgramPolicy,
    /// The program's events at the last poll the VTN answered, and when.
    pub last_good: Option<(Arc<Vec<Event>>, Timestamp)>,
    pub last_attempt: Option<Timestamp>,
    /// The last poll's error; `None` after a success.
    pub failure: Option<String>,
    /// When the last `USAGE` report was accepted.
    pub last_report: Option<Timestamp>,
}

impl ProgramState {
    pub fn new(policy: ProgramPolicy) -> ProgramState {
        ProgramState {
            policy,
            last_good: None,
            last_attempt: None,
            failure: None,
            last_report: None,
        }
    }

    /// Whether a poll is due at `now`.
    pub fn poll_due(&self, now: Timestamp) -> bool {
        self.last_attempt
            .is_none_or(|last| now.duration_since(last) >= self.policy.poll)
    }

    /// Whether a report is due at `now`.
    pub fn report_due(&self, now: Timestamp) -> bool {
        self.last_report
            .is_none_or(|last| now.duration_since(last) >= self.policy.report_every)
    }
}

/// One event interval as it applies to the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEffect {
    pub event_id: String,
    /// `openadr/<event name or id>/<interval id>`.
    pub window: String,
    pub payload_type: &'static str,
    pub cap_watts: Option<f64>,
    pub max_slowdown: Option<f64>,
    pub value: f64,
    pub start: Timestamp,
    /// `None`: until the VTN ends the event.
    pub end: Option<Timestamp>,
}

impl EventEffect {
    pub fn active(&self, now: Timestamp) -> bool {
        self.start <= now && self.end.is_none_or(|end| now < end)
    }
}

fn timestamp(time: &chrono::DateTime<chrono::Utc>) -> Option<Timestamp> {
    Timestamp::new(time.timestamp(), time.timestamp_subsec_nanos() as i32).ok()
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) if n.is_finite() => Some(*n),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// The largest `maxSlowdown` of the bands whose threshold the value is strictly above.
fn band_slowdown(value: f64, bands: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    bands
        .filter(|(above, _)| value > *above)
        .map(|(_, slowdown)| slowdown)
        .reduce(f64::max)
}

/// What `events` mean for a budget under `policy`, and why any payload of them is not used.
pub fn effects(policy: &ProgramPolicy, events: &[Event]) -> (Vec<EventEffect>, Vec<String>) {
    let mut effects = Vec::new();
    let mut ignored = Vec::new();
    for event in events {
        let content = &event.content;
        let label = content
            .event_name
            .clone()
            .unwrap_or_else(|| event.id.as_str().to_owned());
        let created = timestamp(&event.created_date_time).unwrap_or(Timestamp::UNIX_EPOCH);
        let capacity_units = content.payload_descriptors.iter().flatten().find_map(|d| {
            (d.payload_type == EventType::ImportCapacityLimit).then_some(d.units.clone())
        });
        if let Some(Some(units)) = &capacity_units
            && *units != Unit::KW
        {
            ignored.push(format!(
                "{label}: IMPORT_CAPACITY_LIMIT in {units:?}, not KW"
            ));
            continue;
        }
        // Intervals without their own period follow the event's, one after another.
        let mut next_start = content.interval_period.as_ref().map(|p| p.start);
        let default_duration = content
            .interval_period
            .as_ref()
            .and_then(|p| p.duration.clone());
        for interval in content.intervals.iter().flatten() {
            let period_start = interval
                .interval_period
                .as_ref()
                .map(|p| p.start)
                .or(next_start);
            let Some(start) = period_start else {
                ignored.push(format!(
                    "{label}/{}: an interval without a start",
                    interval.id
                ));
                continue;
            };
            let duration = interval
                .interval_period
                .as_ref()
                .and_then(|p| p.duration.clone())
                .or(default_duration.clone());
            let seconds = duration.map(|d| d.to_chrono_at_datetime(start).num_seconds());
            next_start = seconds.map(|s| start + chrono::Duration::seconds(s));
            // "0001-01-01" stands for now: the event's creation.
            let start_at = if chrono::Datelike::year(&start) <= 1 {
                created
            } else {
                timestamp(&start).unwrap_or(created)
            };
            let end = match seconds {
                Some(s) if s < OPEN_ENDED_SECONDS => start_at
                    .checked_add(SignedDuration::from_secs(s.max(0)))
                    .ok(),
                _ => None,
            };
            let window = format!("openadr/{label}/{}", interval.id);
            for payload in &interval.payloads {
                let Some(value) = payload.values.first().and_then(number) else {
                    continue;
                };
                let (payload_type, cap_watts, max_slowdown) = match payload.value_type {
                    EventType::ImportCapacityLimit if value >= 0.0 => {
                        ("IMPORT_CAPACITY_LIMIT", Some(value * 1000.0), None)
                    }
                    EventType::Simple => {
                        let level = policy
                            .simple_levels
                            .iter()
                            .find(|l| l.level as f64 == value);
                        if level.is_none() {
                            ignored.push(format!(
                                "{window}: SIMPLE level {value} is not in simpleLevels"
                            ));
                            continue;
                        }
                        ("SIMPLE", level.map(|l| l.cap_watts), None)
                    }
                    EventType::GHG => {
                        let bands = policy
                            .ghg_bands
                            .iter()
                            .map(|b| (b.above_grams_per_kwh, b.max_slowdown));
                        ("GHG", None, band_slowdown(value, bands))
                    }
                    EventType::Price => {
                        let bands = policy
                            .price_bands
                            .iter()
                            .map(|b| (b.above_price, b.max_slowdown));
                        ("PRICE", None, band_slowdown(value, bands))
                    }
                    _ => continue,
                };
                effects.push(EventEffect {
                    event_id: event.id.as_str().to_owned(),
                    window: window.clone(),
                    payload_type,
                    cap_watts,
                    max_slowdown,
                    value,
                    start: start_at,
                    end,
                });
            }
        }
    }
    (effects, ignored)
}

/// The budgets with their programs' cap windows added to `spec.schedule`, so that the schedule's
/// rules (the lead before a window opens, the lowest open cap, the next pass at a boundary) hold
/// for them as for the user's own windows. Budgets without a program, or not heard from yet, are
/// passed through.
pub fn with_event_windows(
    budgets: &[Arc<PowerBudget>],
    programs: &BTreeMap<String, ProgramState>,
) -> Vec<Arc<PowerBudget>> {
    budgets
        .iter()
        .map(|budget| {
            let Some((policy, events)) = known_events(budget, programs) else {
                return budget.clone();
            };
            let (effects, _) = effects(&policy, &events);
            let windows: Vec<ScheduleWindow> = effects
                .iter()
                .filter_map(|effect| {
                    Some(ScheduleWindow {
                        name: effect.window.clone(),
                        cap_watts: effect.cap_watts?,
                        start: Some(Time(effect.start)),
                        end: Some(Time(effect.end.unwrap_or_else(|| {
                            effect
                                .start
                                .checked_add(SignedDuration::from_secs(OPEN_ENDED_SECONDS))
                                .unwrap_or(Timestamp::MAX)
                        }))),
                        daily: None,
                    })
                })
                .collect();
            if windows.is_empty() {
                return budget.clone();
            }
            let mut budget = PowerBudget::clone(budget);
            budget.spec.schedule.extend(windows);
            Arc::new(budget)
        })
        .collect()
}

/// The valid policy of a budget's program and the events last heard for it.
fn known_events(
    budget: &PowerBudget,
    programs: &BTreeMap<String, ProgramState>,
) -> Option<(ProgramPolicy, Arc<Vec<Event>>)> {
    let spec = budget.spec.signals.as_ref()?.openadr.as_ref()?;
    let policy = ProgramPolicy::from_spec(spec).ok()?;
    let state = programs
        .get(&budget.name_any())
        .filter(|s| s.policy == policy)?;
    Some((policy, state.last_good.as_ref()?.0.clone()))
}

/// Whether the VTN answers, for the `DemandResponseConnected` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Pending,
    Current,
    Unreachable,
    Invalid,
}

impl Connection {
    pub fn reason(self) -> &'static str {
        match self {
            Connection::Pending => reasons::VTN_PENDING,
            Connection::Current => reasons::VTN_CURRENT,
            Connection::Unreachable => reasons::VTN_UNREACHABLE,
            Connection::Invalid => reasons::OPENADR_INVALID,
        }
    }
}

/// A budget's program as the pass saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramReading {
    pub connection: Connection,
    pub message: String,
    pub status: DemandResponseStatus,
}

/// Records each budget's program on its facts, raises its `maxSlowdown` to what an active `GHG` or
/// `PRICE` event asks (never lowers it), and wakes the pass when such an event starts or ends. The
/// cap windows were added before translation ([`with_event_windows`]).
pub fn apply(
    translation: &mut Translation,
    budgets: &[Arc<PowerBudget>],
    programs: &BTreeMap<String, ProgramState>,
    now: Timestamp,
) {
    for (name, spec) in with_signal(budgets, |s| s.openadr.as_ref()) {
        let Some(facts) = translation.budgets.get_mut(&name) else {
            continue;
        };
        let policy = match ProgramPolicy::from_spec(spec) {
            Ok(policy) => policy,
            Err(message) => {
                facts.issues.push(BudgetIssue {
                    reason: reasons::INVALID_SIGNALS,
                    message: format!("signals.openadr: {message}; the program is not followed"),
                });
                facts.demand_response = Some(ProgramReading {
                    connection: Connection::Invalid,
                    message: format!("signals.openadr is invalid: {message}"),
                    status: DemandResponseStatus::default(),
                });
                continue;
            }
        };
        let state = programs.get(&name).filter(|s| s.policy == policy);
        let events = state.and_then(|s| s.last_good.as_ref());
        let (effects, ignored) =
            events.map_or_else(Default::default, |(events, _)| effects(&policy, events));
        let mut effects: Vec<EventEffect> = effects
            .into_iter()
            .filter(|e| e.end.is_none_or(|end| end > now))
            .collect();
        // The VTN lists events in no promised order; status shows them by time.
        effects.sort_by(|a, b| (a.start, &a.window).cmp(&(b.start, &b.window)));
        let slowdown = effects
            .iter()
            .filter(|e| e.active(now))
            .filter_map(|e| e.max_slowdown)
            .reduce(f64::max);
        let raised =
            slowdown.map(|slowdown| facts.max_slowdown.map_or(slowdown, |s| s.max(slowdown)));
        let next_change = effects
            .iter()
            .filter(|e| e.max_slowdown.is_some())
            .flat_map(|e| [Some(e.start), e.end])
            .flatten()
            .filter(|t| *t > now)
            .min();
        let heard = events.map(|(_, at)| *at);
        let (connection, mut message) = match (state.and_then(|s| s.failure.clone()), heard) {
            (None, Some(at)) => (
                Connection::Current,
                format!(
                    "program {:?}: {} event interval(s) in force or ahead, heard at {at}",
                    policy.program_name,
                    effects.len()
                ),
            ),
            (Some(error), Some(at)) => (
                Connection::Unreachable,
                format!("{error}; the events heard at {at} stay in force until they end"),
            ),
            (Some(error), None) => (
                Connection::Unreachable,
                format!(
                    "{error}; no event of program {:?} is known",
                    policy.program_name
                ),
            ),
            (None, None) => (
                Connection::Pending,
                format!("program {:?} not polled yet", policy.program_name),
            ),
        };
        if !ignored.is_empty() {
            message.push_str(&format!("; not used: {}", ignored.join(", ")));
        }
        facts.demand_response = Some(ProgramReading {
            connection,
            message,
            status: DemandResponseStatus {
                events: effects
                    .iter()
                    .map(|e| DemandResponseEvent {
                        window: e.window.clone(),
                        payload_type: e.payload_type.to_owned(),
                        cap_watts: e.cap_watts,
                        max_slowdown: e.max_slowdown,
                        value: e.value,
                        start: kube_time(e.start),
                        end: e.end.map(kube_time),
                    })
                    .collect(),
                max_slowdown: slowdown,
                last_poll_time: heard.map(kube_time),
                last_report_time: state.and_then(|s| s.last_report).map(kube_time),
            },
        });
        if raised.is_some() {
            translation.set_max_slowdown(&name, raised);
        }
        translation.wake_at(next_change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilowatt_crds::{BudgetSignals, PowerBudgetSpec};

    fn spec() -> OpenAdrProgram {
        OpenAdrProgram {
            vtn_url: "http://vtn.test:3000".to_owned(),
            token_url: None,
            program_name: "dr".to_owned(),
            ven_name: "kilowatt".to_owned(),
            credentials_secret: "ven".to_owned(),
            poll_seconds: None,
            report_seconds: None,
            simple_levels: vec![SimpleLevel {
                level: 2,
                cap_watts: 40_000.0,
            }],
            ghg_bands: vec![SlowdownBand {
                above_grams_per_kwh: 400.0,
                max_slowdown: 0.1,
            }],
            price_bands: vec![PriceBand {
                above_price: 0.3,
                max_slowdown: 0.05,
            }],
        }
    }

    fn event(json: serde_json::Value) -> Event {
        let mut object = serde_json::json!({
            "id": "event-1",
            "createdDateTime": "2026-12-01T10:00:00Z",
            "modificationDateTime": "2026-12-01T10:00:00Z",
            "objectType": "EVENT",
            "programID": "program-1",
        });
        object
            .as_object_mut()
            .expect("object")
            .extend(json.as_object().expect("object").clone());
        serde_json::from_value(object).expect("an OpenADR event")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn the_default_token_url_is_on_the_vtns_host() {
        let policy = ProgramPolicy::from_spec(&spec()).expect("valid");
        assert_eq!(policy.vtn_url, "http://vtn.test:3000/");
        assert_eq!(policy.token_url, "http://vtn.test:3000/auth/token");
        let mut nested = spec();
        nested.vtn_url = "https://grid.test/openadr3/3.1.0/".to_owned();
        assert_eq!(
            ProgramPolicy::from_spec(&nested).expect("valid").token_url,
            "https://grid.test/auth/token"
        );
        let mut bad = spec();
        bad.ghg_bands.push(SlowdownBand {
            above_grams_per_kwh: 300.0,
            max_slowdown: 0.2,
        });
        assert!(ProgramPolicy::from_spec(&bad).is_err());
    }

    #[test]
    fn intervals_follow_the_events_period_and_payloads_map_to_caps_and_slowdowns() {
        let policy = ProgramPolicy::from_spec(&spec()).expect("valid");
        let events = [event(serde_json::json!({
            "eventName": "peak",
            "payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}],
            "intervalPeriod": {"start": "2026-12-01T17:00:00Z", "duration": "PT1H"},
            "intervals": [
                {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [50]}]},
                {"id": 1, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [42.5]},
                                      {"type": "GHG", "values": [520.0]}]},
                {"id": 2, "intervalPeriod": {"start": "2026-12-01T20:00:00Z", "duration": "P9999Y"},
                 "payloads": [{"type": "SIMPLE", "values": [2]}, {"type": "PRICE", "values": [0.2]}]},
                {"id": 3, "payloads": [{"type": "SIMPLE", "values": [3]}]}
            ]
        }))];
        let (effects, ignored) = effects(&policy, &events);
        let summary: Vec<_> = effects
            .iter()
            .map(|e| {
                (
                    e.window.as_str(),
                    e.payload_type,
                    e.cap_watts,
                    e.max_slowdown,
                    e.start.to_string(),
                    e.end.map(|t| t.to_string()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "openadr/peak/0",
                    "IMPORT_CAPACITY_LIMIT",
                    Some(50_000.0),
                    None,
                    "2026-12-01T17:00:00Z".to_owned(),
                    Some("2026-12-01T18:00:00Z".to_owned())
                ),
                (
                    "openadr/peak/1",
                    "IMPORT_CAPACITY_LIMIT",
                    Some(42_500.0),
                    None,
                    "2026-12-01T18:00:00Z".to_owned(),
                    Some("2026-12-01T19:00:00Z".to_owned())
                ),
                (
                    "openadr/peak/1",
                    "GHG",
                    None,
                    Some(0.1),
                    "2026-12-01T18:00:00Z".to_owned(),
                    Some("2026-12-01T19:00:00Z".to_owned())
                ),
                (
                    "openadr/peak/2",
                    "SIMPLE",
                    Some(40_000.0),
                    None,
                    "2026-12-01T20:00:00Z".to_owned(),
                    None
                ),
                (
                    "openadr/peak/2",
                    "PRICE",
                    None,
                    None,
                    "2026-12-01T20:00:00Z".to_owned(),
                    None
                ),
            ]
        );
        // Interval 3 has no period of its own and follows an open-ended one: it has no start.
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert!(ignored[0].contains("peak/3"), "{ignored:?}");
    }

    #[test]
    fn capacity_in_other_units_and_unmapped_levels_cap_nothing_and_are_named() {
        let policy = ProgramPolicy::from_spec(&spec()).expect("valid");
        let events = [
            event(serde_json::json!({
                "eventName": "in-kwh",
                "payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KWH"}],
                "intervals": [{"id": 0, "intervalPeriod": {"start": "2026-12-01T17:00:00Z"},
                               "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [5]}]}]
            })),
            event(serde_json::json!({
                "eventName": "level-1",
                "intervals": [{"id": 0, "intervalPeriod": {"start": "0001-01-01T00:00:00Z"},
                               "payloads": [{"type": "SIMPLE", "values": [1]}]}]
            })),
        ];
        let (effects, ignored) = effects(&policy, &events);
        assert!(effects.is_empty(), "{effects:?}");
        assert_eq!(ignored.len(), 2, "{ignored:?}");
    }

    #[test]
    fn known_cap_windows_join_the_schedule_and_stay_while_the_vtn_is_silent() {
        let mut budget = PowerBudget::new(
            "facility",
            PowerBudgetSpec {
                cap_watts: 100_000.0,
                parent: None,
                node_selector: None,
                node_overhead_watts: None,
                schedule: Vec::new(),
                safety_margin_watts: None,
                efficiency: None,
                signals: Some(BudgetSignals {
                    carbon_forecast: None,
                    openadr: Some(spec()),
                }),
            },
        );
        budget.metadata.name = Some("facility".to_owned());
        let budgets = vec![Arc::new(budget)];
        let policy = ProgramPolicy::from_spec(&spec()).expect("valid");
        let events = vec![event(serde_json::json!({
            "intervals": [{"id": 7, "intervalPeriod": {"start": "2026-12-01T17:00:00Z", "duration": "PT2H"},
                           "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [60]}]}]
        }))];
        let mut state = ProgramState::new(policy);
        assert_eq!(
            with_event_windows(
                &budgets,
                &BTreeMap::from([("facility".to_owned(), state.clone())])
            )[0]
            .spec
            .schedule,
            [],
            "nothing heard, nothing added"
        );
        state.last_good = Some((Arc::new(events), at("2026-12-01T16:00:00Z")));
        // The VTN stops answering: what it said stays.
        state.failure = Some("connection refused".to_owned());
        let programs = BTreeMap::from([("facility".to_owned(), state)]);
        let with = with_event_windows(&budgets, &programs);
        let window = &with[0].spec.schedule[0];
        assert_eq!(window.name, "openadr/event-1/7");
        assert_eq!(window.cap_watts, 60_000.0);
        assert_eq!(
            (
                window.start.as_ref().map(|t| t.0),
                window.end.as_ref().map(|t| t.0)
            ),
            (
                Some(at("2026-12-01T17:00:00Z")),
                Some(at("2026-12-01T19:00:00Z"))
            )
        );
        let cap = crate::plan::schedule::effective_cap(
            &with[0].spec,
            at("2026-12-01T18:00:00Z"),
            std::time::Duration::ZERO,
        );
        assert_eq!(cap.cap_watts, 60_000.0);
        assert_eq!(cap.open_windows, ["openadr/event-1/7"]);
    }
}
