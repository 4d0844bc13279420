//! Carbon-intensity forecasts as WattTime v3 and Electricity Maps v3 serve them, parsed into one time
//! series of gCO2eq/kWh with the instant the source generated it. Pure: bytes in, a forecast or a
//! typed error out.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_crds::ForecastFormat;
use serde::Deserialize;

/// Grams per pound: WattTime reports `lbs_co2_per_mwh`, and 1 lb/MWh = 0.453 592 37 g/kWh.
const GRAMS_PER_POUND: f64 = 453.592_37;
/// The most points a forecast may hold: WattTime's 72 h at 5-minute points is 864.
pub const MAX_POINTS: usize = 10_000;
/// The step of a WattTime forecast that does not say (`meta.data_point_period_seconds`).
const WATTTIME_PERIOD: SignedDuration = SignedDuration::from_secs(300);
/// The step of an Electricity Maps forecast with a single point.
const ELECTRICITY_MAPS_PERIOD: SignedDuration = SignedDuration::from_secs(3600);

/// One forecast value: the intensity from `at` until the next point (or `at + period`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastPoint {
    pub at: Timestamp,
    pub grams_per_kwh: f64,
}

/// A forecast, sorted by time, at least one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// When the source generated it (WattTime `meta.generated_at`, Electricity Maps `updatedAt`).
    pub generated_at: Timestamp,
    pub points: Vec<ForecastPoint>,
    /// How long each point holds; the last one ends `period` after its start.
    pub period: SignedDuration,
}

/// Why a response is not a forecast.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("the response is not a {format:?} forecast")]
    Json {
        format: ForecastFormat,
        #[source]
        source: serde_json::Error,
    },
    #[error("{field} {value:?} is not an RFC 3339 time")]
    Time {
        field: &'static str,
        value: String,
        #[source]
        source: k8s_openapi::jiff::Error,
    },
    #[error("units {units:?} are not lbs_co2_per_mwh")]
    Units { units: String },
    #[error("the forecast has no points")]
    Empty,
    #[error("the forecast has {points} points, more than {MAX_POINTS}")]
    TooLong { points: usize },
    #[error("the value at {at} is {value}, not a finite intensity at least 0")]
    Value { at: Timestamp, value: f64 },
    #[error("two points are at {at}")]
    Duplicate { at: Timestamp },
    #[error("the point period is {seconds} s, not positive")]
    Period { seconds: i64 },
}

#[derive(Deserialize)]
struct WattTimeResponse {
    data: Vec<WattTimePoint>,
    meta: WattTimeMeta,
}

#[derive(Deserialize)]
struct WattTimePoint {
    point_time: String,
    value: f64,
}

#[derive(Deserialize)]
struct WattTimeMeta {
    units: String,
    generated_at: String,
    #[serde(default)]
    data_point_period_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ElectricityMapsResponse {
    forecast: Vec<ElectricityMapsPoint>,
    updated_at: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ElectricityMapsPoint {
    datetime: String,
    /// NB: Electricity Maps leaves a value it has not estimated `null`; such a point is skipped.
    carbon_intensity: Option<f64>,
}

fn time(field: &'static str, value: &str) -> Result<Timestamp, ForecastError> {
    value.parse().map_err(|source| ForecastError::Time {
        field,
        value: value.to_owned(),
        source,
    })
}

/// Parses a response body of `format`.
pub fn parse(format: ForecastFormat, body: &[u8]) -> Result<Forecast, ForecastError> {
    let json = |source| ForecastError::Json { format, source };
    match format {
        ForecastFormat::WattTime => {
            let response: WattTimeResponse = serde_json::from_slice(body).map_err(json)?;
            if response.meta.units != "lbs_co2_per_mwh" {
                return Err(ForecastError::Units {
                    units: response.meta.units,
                });
            }
            let points = response
                .data
                .iter()
                .map(|p| {
                    Ok(ForecastPoint {
                        at: time("point_time", &p.point_time)?,
                        grams_per_kwh: p.value * GRAMS_PER_POUND / 1000.0,
                    })
                })
                .collect::<Result<Vec<_>, ForecastError>>()?;
            let period = match response.meta.data_point_period_seconds {
                Some(seconds) if seconds <= 0 => return Err(ForecastError::Period { seconds }),
                Some(seconds) => SignedDuration::from_secs(seconds),
                None => WATTTIME_PERIOD,
            };
            checked(
                time("meta.generated_at", &response.meta.generated_at)?,
                points,
                Some(period),
            )
        }
        ForecastFormat::ElectricityMaps => {
            let response: ElectricityMapsResponse = serde_json::from_slice(body).map_err(json)?;
            let points = response
                .forecast
                .iter()
                .filter_map(|p| Some((p, p.carbon_intensity?)))
                .map(|(p, value)| {
                    Ok(ForecastPoint {
                        at: time("datetime", &p.datetime)?,
                        grams_per_kwh: value,
                    })
                })
                .collect::<Result<Vec<_>, ForecastError>>()?;
            checked(time("updatedAt", &response.updated_at)?, points, None)
        }
    }
}

/// Sorts and checks the points; without `period`, the smallest step between points is the period.
fn checked(
    generated_at: Timestamp,
    mut points: Vec<ForecastPoint>,
    period: Option<SignedDuration>,
) -> Result<Forecast, ForecastError> {
    if points.is_empty() {
        return Err(ForecastError::Empty);
    }
    if points.len() > MAX_POINTS {
        return Err(ForecastError::TooLong {
            points: points.len(),
        });
    }
    if let Some(bad) = points
        .iter()
        .find(|p| !(p.grams_per_kwh.is_finite() && p.grams_per_kwh >= 0.0))
    {
        return Err(ForecastError::Value {
            at: bad.at,
            value: bad.grams_per_kwh,
        });
    }
    points.sort_by_key(|p| p.at);
    let steps = points.windows(2).map(|w| w[1].at.duration_since(w[0].at));
    if let Some(pair) = points.windows(2).find(|w| w[0].at == w[1].at) {
        return Err(ForecastError::Duplicate { at: pair[0].at });
    }
    let period = period
        .or_else(|| steps.min())
        .unwrap_or(ELECTRICITY_MAPS_PERIOD);
    Ok(Forecast {
        generated_at,
        points,
        period,
    })
}

impl Forecast {
    /// When the last point ends.
    pub fn end(&self) -> Option<Timestamp> {
        self.points
            .last()
            .and_then(|p| p.at.checked_add(self.period).ok())
    }

    /// The intensity at `t`: the last point at or before `t`, or the first point for a `t` between
    /// `generated_at` and it; `None` before `generated_at` or from [`Forecast::end`] on.
    pub fn intensity_at(&self, t: Timestamp) -> Option<f64> {
        if t < self.generated_at.min(self.points.first()?.at) || self.end().is_none_or(|e| t >= e) {
            return None;
        }
        let after = self.points.partition_point(|p| p.at <= t);
        let point = self.points.get(after.saturating_sub(1))?;
        Some(point.grams_per_kwh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    /// Shaped as WattTime documents `/v3/forecast` (values made up).
    const WATTTIME: &str = r#"{
        "data": [
            {"point_time": "2026-05-03T10:05:00+00:00", "value": 870.0, "version": "3.2"},
            {"point_time": "2026-05-03T10:10:00+00:00", "value": 1100.5, "version": "3.2"},
            {"point_time": "2026-05-03T10:15:00+00:00", "value": 640.0, "version": "3.2"}
        ],
        "meta": {
            "data_point_period_seconds": 300,
            "region": "CAISO_NORTH",
            "warnings": [],
            "signal_type": "co2_moer",
            "model": {"date": "2026-03-01"},
            "units": "lbs_co2_per_mwh",
            "generated_at_period_seconds": 300,
            "generated_at": "2026-05-03T10:03:12+00:00"
        }
    }"#;

    /// Shaped as Electricity Maps documents `/v3/carbon-intensity/forecast` (values made up).
    const ELECTRICITY_MAPS: &str = r#"{
        "zone": "DE",
        "forecast": [
            {"carbonIntensity": 310, "datetime": "2026-05-03T12:00:00.000Z"},
            {"carbonIntensity": 290, "datetime": "2026-05-03T11:00:00.000Z"},
            {"carbonIntensity": null, "datetime": "2026-05-03T13:00:00.000Z"},
            {"carbonIntensity": 455, "datetime": "2026-05-03T14:00:00.000Z"}
        ],
        "updatedAt": "2026-05-03T10:47:00.000Z"
    }"#;

    #[test]
    fn a_watttime_forecast_is_converted_from_pounds_per_mwh_to_grams_per_kwh() {
        let forecast = parse(ForecastFormat::WattTime, WATTTIME.as_bytes()).expect("parses");
        assert_eq!(forecast.generated_at, at("2026-05-03T10:03:12Z"));
        assert_eq!(forecast.period, SignedDuration::from_secs(300));
        assert_eq!(forecast.points.len(), 3);
        assert!((forecast.points[1].grams_per_kwh - 1100.5 * 0.453_592_37).abs() < 1e-9);
        assert_eq!(forecast.end(), Some(at("2026-05-03T10:20:00Z")));
    }

    #[test]
    fn an_electricity_maps_forecast_is_sorted_skips_nulls_and_steps_by_its_smallest_gap() {
        let forecast =
            parse(ForecastFormat::ElectricityMaps, ELECTRICITY_MAPS.as_bytes()).expect("parses");
        assert_eq!(forecast.generated_at, at("2026-05-03T10:47:00Z"));
        let values: Vec<f64> = forecast.points.iter().map(|p| p.grams_per_kwh).collect();
        assert_eq!(values, [290.0, 310.0, 455.0]);
        assert_eq!(forecast.period, SignedDuration::from_secs(3600));
        // The null 13:00 point is skipped: 12:00's value holds until 14:00.
        assert_eq!(
            forecast.intensity_at(at("2026-05-03T13:30:00Z")),
            Some(310.0)
        );
    }

    #[test]
    fn the_intensity_is_a_step_function_from_generation_to_the_last_points_end() {
        let forecast = parse(ForecastFormat::WattTime, WATTTIME.as_bytes()).expect("parses");
        let g = |lbs: f64| Some(lbs * GRAMS_PER_POUND / 1000.0);
        assert_eq!(forecast.intensity_at(at("2026-05-03T10:00:00Z")), None);
        assert_eq!(forecast.intensity_at(at("2026-05-03T10:04:00Z")), g(870.0));
        assert_eq!(forecast.intensity_at(at("2026-05-03T10:09:59Z")), g(870.0));
        assert_eq!(forecast.intensity_at(at("2026-05-03T10:10:00Z")), g(1100.5));
        assert_eq!(forecast.intensity_at(at("2026-05-03T10:19:59Z")), g(640.0));
        assert_eq!(forecast.intensity_at(at("2026-05-03T10:20:00Z")), None);
    }

    #[test]
    fn malformed_forecasts_are_typed_errors() {
        let watttime = |data: &str, units: &str| {
            format!(
                r#"{{"data": {data}, "meta": {{"units": "{units}", "generated_at": "2026-05-03T10:00:00Z"}}}}"#
            )
        };
        let cases = [
            (ForecastFormat::WattTime, "not json".to_owned(), "Json"),
            (
                ForecastFormat::WattTime,
                ELECTRICITY_MAPS.to_owned(),
                "Json",
            ),
            (
                ForecastFormat::WattTime,
                watttime("[]", "lbs_co2_per_mwh"),
                "Empty",
            ),
            (
                ForecastFormat::WattTime,
                watttime(
                    r#"[{"point_time": "2026-05-03T10:05:00Z", "value": 1}]"#,
                    "percentile",
                ),
                "Units",
            ),
            (
                ForecastFormat::WattTime,
                watttime(
                    r#"[{"point_time": "yesterday", "value": 1}]"#,
                    "lbs_co2_per_mwh",
                ),
                "Time",
            ),
            (
                ForecastFormat::WattTime,
                watttime(
                    r#"[{"point_time": "2026-05-03T10:05:00Z", "value": -3}]"#,
                    "lbs_co2_per_mwh",
                ),
                "Value",
            ),
            (
                ForecastFormat::ElectricityMaps,
                r#"{"forecast": [{"datetime": "2026-05-03T11:00:00Z", "carbonIntensity": 1},
                                 {"datetime": "2026-05-03T11:00:00Z", "carbonIntensity": 2}],
                    "updatedAt": "2026-05-03T10:00:00Z"}"#
                    .to_owned(),
                "Duplicate",
            ),
        ];
        for (format, body, expected) in cases {
            let error = parse(format, body.as_bytes()).expect_err(&body);
            assert!(
                format!("{error:?}").starts_with(expected),
                "{body}: {error:?}"
            );
        }
    }
}
