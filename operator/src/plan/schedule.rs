//! Which schedule windows of a PowerBudget are open at a given instant, the cap that results, and when
//! the next window opens or closes. Pure: the current time is an argument.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_crds::{PowerBudgetSpec, ScheduleWindow};

const DAY_SECONDS: i64 = 24 * 60 * 60;

/// The cap in force for a budget at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveCap {
    /// The lowest of `capWatts` and every open window's cap.
    pub cap_watts: f64,
    /// Names of the open windows, in spec order.
    pub open_windows: Vec<String>,
}

/// Minutes after midnight UTC of an `HH:MM` string; `None` when malformed (the schema's pattern
/// normally rejects those first).
fn minutes_of_day(hh_mm: &str) -> Option<i64> {
    let (hours, minutes) = hh_mm.split_once(':')?;
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    ((0..24).contains(&hours) && (0..60).contains(&minutes)).then_some(hours * 60 + minutes)
}

/// Whether `window` is open at `now`, and the next instant after `now` at which that changes.
fn window_state(window: &ScheduleWindow, now: Timestamp) -> (bool, Option<Timestamp>) {
    if let (Some(start), Some(end)) = (&window.start, &window.end) {
        let open = start.0 <= now && now < end.0;
        let next = [start.0, end.0].into_iter().filter(|t| *t > now).min();
        return (open, next);
    }
    let Some(daily) = &window.daily else {
        return (false, None);
    };
    let (Some(start), Some(end)) = (minutes_of_day(&daily.start), minutes_of_day(&daily.end))
    else {
        return (false, None);
    };
    if start == end {
        // An empty daily window never opens.
        return (false, None);
    }
    let seconds = now.as_second();
    let second_of_day = seconds.rem_euclid(DAY_SECONDS);
    let midnight = seconds - second_of_day;
    let (start_s, end_s) = (start * 60, end * 60);
    let open = if start_s < end_s {
        (start_s..end_s).contains(&second_of_day)
    } else {
        second_of_day >= start_s || second_of_day < end_s
    };
    let next_boundary = [start_s, end_s]
        .into_iter()
        .map(|b| {
            if b > second_of_day {
                midnight + b
            } else {
                midnight + DAY_SECONDS + b
            }
        })
        .min();
    let next =
        next_boundary.and_then(|s| now.checked_add(SignedDuration::from_secs(s - seconds)).ok());
    (open, next)
}

/// How long before a schedule window opens the operator plans its cap, so that the cap is enforced
/// when the window opens (a pass and a rollout take well under a second; the rest is room for a slow
/// solve or etcd).
pub const DEFAULT_WINDOW_LEAD: std::time::Duration = std::time::Duration::from_secs(5);

fn plus(now: Timestamp, lead: std::time::Duration) -> Timestamp {
    SignedDuration::try_from(lead)
        .ok()
        .and_then(|lead| now.checked_add(lead).ok())
        .unwrap_or(now)
}

/// Whether `window` is open at `now` or opens within `lead` after it.
fn open_within(window: &ScheduleWindow, now: Timestamp, lead: std::time::Duration) -> bool {
    let (open, next) = window_state(window, now);
    open || next
        .is_some_and(|boundary| boundary <= plus(now, lead) && window_state(window, boundary).0)
}

/// The cap of `spec` to plan at `now`: the lowest of `capWatts` and every window open now or
/// opening within `lead`.
pub fn effective_cap(
    spec: &PowerBudgetSpec,
    now: Timestamp,
    lead: std::time::Duration,
) -> EffectiveCap {
    let mut cap_watts = spec.cap_watts;
    let mut open_windows = Vec::new();
    for window in &spec.schedule {
        if open_within(window, now, lead) {
            cap_watts = cap_watts.min(window.cap_watts);
            open_windows.push(window.name.clone());
        }
    }
    EffectiveCap {
        cap_watts,
        open_windows,
    }
}

/// The next instant after `now` at which the cap to plan may change: a window of `spec` opens
/// (less `lead`) or closes.
pub fn next_transition(
    spec: &PowerBudgetSpec,
    now: Timestamp,
    lead: std::time::Duration,
) -> Option<Timestamp> {
    let lead = SignedDuration::try_from(lead).unwrap_or(SignedDuration::ZERO);
    spec.schedule
        .iter()
        .flat_map(|w| {
            let closing = window_state(w, now).1;
            let opening = now
                .checked_add(lead)
                .ok()
                .and_then(|ahead| window_state(w, ahead).1)
                .and_then(|at| at.checked_sub(lead).ok());
            [closing, opening]
        })
        .flatten()
        .filter(|at| *at > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kilowatt_crds::DailyWindow;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn spec(schedule: Vec<ScheduleWindow>) -> PowerBudgetSpec {
        PowerBudgetSpec {
            cap_watts: 10_000.0,
            parent: None,
            node_selector: None,
            node_overhead_watts: None,
            schedule,
            safety_margin_watts: None,
            efficiency: None,
            signals: None,
        }
    }

    fn absolute(name: &str, cap: f64, start: &str, end: &str) -> ScheduleWindow {
        ScheduleWindow {
            name: name.into(),
            cap_watts: cap,
            start: Some(Time(at(start))),
            end: Some(Time(at(end))),
            daily: None,
        }
    }

    fn daily(name: &str, cap: f64, start: &str, end: &str) -> ScheduleWindow {
        ScheduleWindow {
            name: name.into(),
            cap_watts: cap,
            start: None,
            end: None,
            daily: Some(DailyWindow {
                start: start.into(),
                end: end.into(),
            }),
        }
    }

    #[test]
    fn a_window_is_planned_its_lead_before_it_opens_and_the_pass_is_timed_for_it() {
        let lead = std::time::Duration::from_secs(5);
        let s = spec(vec![
            absolute(
                "dr-event",
                6_000.0,
                "2026-11-28T18:00:00Z",
                "2026-11-28T19:00:00Z",
            ),
            daily("night", 8_000.0, "02:00", "04:00"),
        ]);
        assert_eq!(
            effective_cap(&s, at("2026-11-28T17:59:54Z"), lead).cap_watts,
            10_000.0
        );
        assert_eq!(
            effective_cap(&s, at("2026-11-28T17:59:55Z"), lead).cap_watts,
            6_000.0,
            "5 s ahead"
        );
        assert_eq!(
            next_transition(&s, at("2026-11-28T17:00:00Z"), lead),
            Some(at("2026-11-28T17:59:55Z"))
        );
        assert_eq!(
            effective_cap(&s, at("2026-11-28T19:00:00Z"), lead).cap_watts,
            10_000.0,
            "a closing window is not held past its end"
        );
        assert_eq!(
            effective_cap(&s, at("2026-11-29T01:59:57Z"), lead).open_windows,
            ["night"]
        );
        assert_eq!(
            next_transition(&s, at("2026-11-29T01:00:00Z"), lead),
            Some(at("2026-11-29T01:59:55Z"))
        );
    }

    #[test]
    fn an_absolute_window_lowers_the_cap_only_while_open() {
        let s = spec(vec![absolute(
            "dr-event",
            6_000.0,
            "2026-11-28T18:00:00Z",
            "2026-11-28T19:00:00Z",
        )]);
        let before = effective_cap(&s, at("2026-11-28T17:59:59Z"), std::time::Duration::ZERO);
        assert_eq!(before.cap_watts, 10_000.0);
        assert!(before.open_windows.is_empty());
        let during = effective_cap(&s, at("2026-11-28T18:00:00Z"), std::time::Duration::ZERO);
        assert_eq!(during.cap_watts, 6_000.0);
        assert_eq!(during.open_windows, vec!["dr-event".to_string()]);
        assert_eq!(
            effective_cap(&s, at("2026-11-28T19:00:00Z"), std::time::Duration::ZERO).cap_watts,
            10_000.0
        );
        assert_eq!(
            next_transition(&s, at("2026-11-28T17:00:00Z"), std::time::Duration::ZERO),
            Some(at("2026-11-28T18:00:00Z"))
        );
        assert_eq!(
            next_transition(&s, at("2026-11-28T18:30:00Z"), std::time::Duration::ZERO),
            Some(at("2026-11-28T19:00:00Z"))
        );
        assert_eq!(
            next_transition(&s, at("2026-11-28T19:00:00Z"), std::time::Duration::ZERO),
            None
        );
    }

    #[test]
    fn a_daily_window_past_midnight_wraps() {
        let s = spec(vec![daily("night", 7_000.0, "22:00", "06:00")]);
        assert_eq!(
            effective_cap(&s, at("2026-11-28T23:30:00Z"), std::time::Duration::ZERO).cap_watts,
            7_000.0
        );
        assert_eq!(
            effective_cap(&s, at("2026-11-29T05:59:00Z"), std::time::Duration::ZERO).cap_watts,
            7_000.0
        );
        assert_eq!(
            effective_cap(&s, at("2026-11-29T06:00:00Z"), std::time::Duration::ZERO).cap_watts,
            10_000.0
        );
        assert_eq!(
            next_transition(&s, at("2026-11-28T23:30:00Z"), std::time::Duration::ZERO),
            Some(at("2026-11-29T06:00:00Z"))
        );
        assert_eq!(
            next_transition(&s, at("2026-11-28T12:00:00Z"), std::time::Duration::ZERO),
            Some(at("2026-11-28T22:00:00Z"))
        );
    }

    #[test]
    fn the_lowest_open_window_wins_and_a_window_above_the_cap_changes_nothing() {
        let s = spec(vec![
            daily("always-high", 12_000.0, "00:00", "23:59"),
            daily("afternoon", 8_000.0, "12:00", "18:00"),
            daily("peak", 5_000.0, "15:00", "16:00"),
        ]);
        let at_1530 = effective_cap(&s, at("2026-11-28T15:30:00Z"), std::time::Duration::ZERO);
        assert_eq!(at_1530.cap_watts, 5_000.0);
        assert_eq!(at_1530.open_windows.len(), 3);
        assert_eq!(
            effective_cap(&s, at("2026-11-28T13:00:00Z"), std::time::Duration::ZERO).cap_watts,
            8_000.0
        );
        assert_eq!(
            effective_cap(&s, at("2026-11-28T10:00:00Z"), std::time::Duration::ZERO).cap_watts,
            10_000.0
        );
    }
}
