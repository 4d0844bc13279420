//! Kilowatt's custom resources, group `kilowatt.dev`, version `v1alpha1`: `PowerBudget` (a cluster-scoped
//! power cap in the facility → row → rack tree) and `WorkloadProfile` (a namespaced throughput curve);
//! in [`plan`], the wire types of the plan protocol in etcd; and, in [`profile_file`], the profile files
//! the project ships and their parser. Types, parsing and manifest generation only; no IO.

pub mod plan;
pub mod profile_file;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// A power cap over the nodes it selects and every budget below it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kilowatt.dev",
    version = "v1alpha1",
    kind = "PowerBudget",
    plural = "powerbudgets",
    shortname = "pb",
    status = "PowerBudgetStatus",
    printcolumn = r#"{"name":"Cap","type":"number","jsonPath":".spec.capWatts","description":"configured cap (W)"}"#,
    printcolumn = r#"{"name":"Effective","type":"number","jsonPath":".status.effectiveCapWatts","description":"lowest active cap (W)"}"#,
    printcolumn = r#"{"name":"Allocated","type":"number","jsonPath":".status.allocatedWatts","description":"planned limits plus overheads (W)"}"#,
    printcolumn = r#"{"name":"Headroom","type":"number","jsonPath":".status.headroomWatts","description":"effective cap minus allocated (W)"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.parent) || self.parent != ''").message("parent must not be empty when set"))]
#[serde(rename_all = "camelCase")]
pub struct PowerBudgetSpec {
    /// Cap in watts on the GPU power limits plus node overheads under this budget; at most 1e10
    /// (10 GW), the most the solver plans.
    #[schemars(range(min = 0.0, max = 1e10))]
    pub cap_watts: f64,
    /// Name of the PowerBudget this one sits under; a budget without parent is a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The nodes directly in this budget (not those of its children).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Non-GPU draw per node in watts; the node annotation `kilowatt.dev/overhead-watts` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1e7))]
    pub node_overhead_watts: Option<f64>,
    /// Time windows with their own cap; the effective cap is the lowest of `capWatts` and every active
    /// window's cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub schedule: Vec<ScheduleWindow>,
    /// Watts held back from the cap when planning (measurement error, transients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1e10))]
    pub safety_margin_watts: Option<f64>,
    /// Efficiency policy: absent, the plan gets the most throughput the caps allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencyPolicy>,
    /// Signals from outside that steer the efficiency policy over time; they only ever raise the
    /// `maxSlowdown` planned with (less power), never a cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<BudgetSignals>,
}

/// Outside signals of a budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSignals {
    /// A carbon-intensity forecast polled over HTTP, mapped to `maxSlowdown` by bands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carbon_forecast: Option<CarbonForecast>,
    /// An OpenADR 3.1 demand-response program the budget takes part in as a VEN: its events become
    /// cap windows and slowdown bands, and the budget's measured power is reported back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openadr: Option<OpenAdrProgram>,
}

/// `OpenAdrProgram.pollSeconds`' default.
pub const DEFAULT_OPENADR_POLL_SECONDS: u32 = 30;
/// `OpenAdrProgram.reportSeconds`' default.
pub const DEFAULT_OPENADR_REPORT_SECONDS: u32 = 60;

/// A program on an OpenADR 3.1 VTN, and what its events mean for this budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenAdrProgram {
    /// The base URL of the VTN's OpenADR 3.1 REST API (`http://` or `https://`), e.g.
    /// `https://vtn.example.com/openadr3/3.1.0/`; `programs`, `events` and `reports` are resolved
    /// against it.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("vtnUrl must start with http:// or https://"))]
    pub vtn_url: String,
    /// The OAuth 2 token endpoint (client-credentials grant); default `/auth/token` on the VTN's
    /// host, where the OpenLEADR VTN serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub token_url: Option<String>,
    /// The program's `programName` at the VTN.
    #[schemars(length(min = 1, max = 128))]
    pub program_name: String,
    /// The name reports are sent under (`clientName`), usually the VEN's name at enrollment.
    #[schemars(length(min = 1, max = 128))]
    pub ven_name: String,
    /// A Secret in the operator's namespace with the VEN's OAuth client credentials under the keys
    /// `clientID` and `clientSecret`.
    pub credentials_secret: String,
    /// Seconds between polls of the program's events (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_seconds: Option<u32>,
    /// Seconds between `USAGE` reports of the budget's measured power during an event (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub report_seconds: Option<u32>,
    /// The cap each `SIMPLE` level stands for; a level not listed caps nothing (and is named in
    /// status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub simple_levels: Vec<SimpleLevel>,
    /// `GHG` event values (g/kWh) mapped to `maxSlowdown`, as `carbonForecast.bands`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ghg_bands: Vec<SlowdownBand>,
    /// `PRICE` event values mapped to `maxSlowdown`: while the price is above a band's threshold,
    /// its `maxSlowdown` may be planned with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub price_bands: Vec<PriceBand>,
}

/// What a `SIMPLE` event level means.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimpleLevel {
    /// The level (OpenADR's SIMPLE levels are 0 to 3).
    pub level: i64,
    #[schemars(range(min = 0.0, max = 1e10))]
    pub cap_watts: f64,
}

/// A price threshold and the slowdown it buys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriceBand {
    /// In the event's currency per unit; the band applies while the price is strictly above it.
    pub above_price: f64,
    /// A fraction in [0, 1), as `efficiency.maxSlowdown`.
    #[schemars(range(min = 0.0, max = 1.0))]
    #[x_kube(validation = Rule::new("self < 1.0").message("maxSlowdown must be below 1"))]
    pub max_slowdown: f64,
}

/// `CarbonForecast.pollSeconds`' default.
pub const DEFAULT_FORECAST_POLL_SECONDS: u32 = 300;
/// `CarbonForecast.staleAfterSeconds`' default.
pub const DEFAULT_FORECAST_STALE_AFTER_SECONDS: u32 = 3600;

/// A carbon-intensity forecast source and the slowdown each intensity buys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.staleAfterSeconds) ? self.staleAfterSeconds : 3600) >= (has(self.pollSeconds) ? self.pollSeconds : 300)").message("staleAfterSeconds must be at least pollSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct CarbonForecast {
    /// The forecast's `http://` or `https://` URL, query included (e.g.
    /// `https://api.watttime.org/v3/forecast?region=CAISO_NORTH&signal_type=co2_moer`).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    pub url: String,
    /// The response's format.
    pub format: ForecastFormat,
    /// Seconds between fetches (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub poll_seconds: Option<u32>,
    /// How long the last good forecast is planned on after it was fetched, while the source fails
    /// (default 3600); past it the budget falls back to `spec.efficiency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub stale_after_seconds: Option<u32>,
    /// A key of a Secret in the operator's namespace holding the API token: sent as
    /// `Authorization: Bearer` to WattTime and as the `auth-token` header to Electricity Maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Sorted by `aboveGramsPerKWh`, with `maxSlowdown` not decreasing: while the forecast
    /// intensity is above a band's threshold, that band's `maxSlowdown` may be planned with.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.map(b, b.aboveGramsPerKWh).isSorted()").message("bands must be sorted by aboveGramsPerKWh"))]
    #[x_kube(validation = Rule::new("self.map(b, b.maxSlowdown).isSorted()").message("a higher band must not have a smaller maxSlowdown"))]
    pub bands: Vec<SlowdownBand>,
}

/// The format of a forecast response: `WattTime` (v3 `/v3/forecast`: `data[{point_time, value}]`
/// in `meta.units` `lbs_co2_per_mwh`, `meta.generated_at`) or `ElectricityMaps` (v3
/// `/v3/carbon-intensity/forecast`: `forecast[{datetime, carbonIntensity}]` in gCO2eq/kWh,
/// `updatedAt`).
// NB: no doc comments on the variants: schemars would make them a `oneOf`, which is not a
// structural schema.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForecastFormat {
    WattTime,
    ElectricityMaps,
}

/// One key of a Secret in the operator's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// An intensity threshold and the slowdown it buys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlowdownBand {
    /// gCO2eq/kWh; the band applies while the forecast is strictly above it.
    #[serde(rename = "aboveGramsPerKWh")]
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub above_grams_per_kwh: f64,
    /// A fraction in [0, 1), as `efficiency.maxSlowdown`.
    #[schemars(range(min = 0.0, max = 1.0))]
    #[x_kube(validation = Rule::new("self < 1.0").message("maxSlowdown must be below 1"))]
    pub max_slowdown: f64,
}

/// How much throughput the workloads under a budget may give up for less GPU power.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EfficiencyPolicy {
    /// A fraction in [0, 1): the workloads under this budget keep at least `1 − maxSlowdown` of the
    /// weighted normalized throughput the max-throughput plan gives them, and within that the plan
    /// uses the least GPU power. Every budget that sets it holds at once, each against its own
    /// max-throughput throughput; `0` is the max-throughput plan.
    #[schemars(range(min = 0.0, max = 1.0))]
    #[x_kube(validation = Rule::new("self < 1.0").message("maxSlowdown must be below 1"))]
    pub max_slowdown: f64,
}

/// A window with its own cap: either an absolute interval (a demand-response event) or a daily one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.daily) != (has(self.start) || has(self.end))").message("a window has either start and end, or daily"))]
#[x_kube(validation = Rule::new("has(self.start) == has(self.end)").message("start and end go together"))]
#[x_kube(validation = Rule::new("!has(self.start) || self.start < self.end").message("start must be before end"))]
#[serde(rename_all = "camelCase")]
pub struct ScheduleWindow {
    /// Shown in events and status when the window opens or closes.
    pub name: String,
    #[schemars(range(min = 0.0, max = 1e10))]
    pub cap_watts: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<DailyWindow>,
}

/// A window that recurs every day, in UTC; `end` before `start` wraps past midnight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DailyWindow {
    /// `HH:MM`, UTC.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// `HH:MM`, UTC.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
}

/// What the operator last planned and measured for a budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PowerBudgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_cap_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_watts: Option<f64>,
    /// Measured draw reported by the node agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom_watts: Option<f64>,
    /// The most the GPU limits and node overheads under this budget may enforce now: acknowledged
    /// limits, anything written since, GPUs at their maximum where nothing proves them lower (a
    /// rebooted machine, GPUs no agent reports), and nodes that do not lower counted at what they
    /// hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub possible_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Weighted throughput of the workloads under this budget over their best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalized_throughput: Option<f64>,
    /// With `spec.efficiency`: what the policy saved and cost against the max-throughput plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencyStatus>,
    /// With `spec.signals.carbonForecast`: the forecast in force and the slowdown it set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<SignalsStatus>,
    /// With `spec.signals.openadr`: the program's events in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand_response: Option<DemandResponseStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_solve_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Infeasible`, `Conflict`, `Degraded`, `CapEnforced`, and `SignalsAvailable` with
    /// `spec.signals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A budget's efficiency policy in the plan in force, against the max-throughput plan of the same
/// pass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EfficiencyStatus {
    /// The `maxSlowdown` planned with.
    pub max_slowdown: f64,
    /// GPU limits under this budget in the max-throughput plan minus in the plan in force (W).
    pub saved_watts: f64,
    /// The share of the max-throughput plan's weighted normalized throughput under this budget that
    /// the plan in force gives up: 0 to `maxSlowdown`.
    pub throughput_cost: f64,
}

/// A budget's OpenADR program as the operator last heard it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DemandResponseStatus {
    /// The program's events that cap or steer this budget now or later, as last heard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<DemandResponseEvent>,
    /// The largest `maxSlowdown` a `GHG` or `PRICE` event asks for now; absent when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown: Option<f64>,
    /// When the VTN last answered a poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
    /// When the last `USAGE` report was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<Time>,
}

/// One interval of an OpenADR event, as it applies to the budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DemandResponseEvent {
    /// The schedule window it became: `openadr/<event name or id>/<interval id>`.
    pub window: String,
    /// `IMPORT_CAPACITY_LIMIT`, `SIMPLE`, `GHG` or `PRICE`.
    #[serde(rename = "type")]
    pub payload_type: String,
    /// The cap it sets, for capacity limits and mapped `SIMPLE` levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_watts: Option<f64>,
    /// The `maxSlowdown` it asks for, for `GHG` and `PRICE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown: Option<f64>,
    /// The value the VTN sent.
    pub value: f64,
    pub start: Time,
    /// Absent: until the VTN ends the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}

/// A budget's carbon forecast in force.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SignalsStatus {
    /// The forecast's intensity now (gCO2eq/kWh); absent while no current forecast is in force.
    #[serde(
        rename = "carbonIntensityGramsPerKWh",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub carbon_intensity_grams_per_kwh: Option<f64>,
    /// The `maxSlowdown` of the band that intensity is in; absent below every band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band_max_slowdown: Option<f64>,
    /// The `maxSlowdown` in force: the larger of the band's and `spec.efficiency.maxSlowdown`;
    /// absent when neither applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown: Option<f64>,
    /// The forecast's own `generated_at` / `updatedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_generated_at: Option<Time>,
    /// When the operator last fetched a good forecast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_fetched_at: Option<Time>,
}

/// A workload's measured throughput against its power limit (or locked SM clock).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kilowatt.dev",
    version = "v1alpha1",
    kind = "WorkloadProfile",
    plural = "workloadprofiles",
    shortname = "wp",
    namespaced,
    status = "WorkloadProfileStatus",
    printcolumn = r#"{"name":"GPU","type":"string","jsonPath":".spec.gpuModel"}"#,
    printcolumn = r#"{"name":"Unit","type":"string","jsonPath":".spec.throughputUnit"}"#,
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".spec.job","priority":1}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Converged","type":"string","jsonPath":".status.conditions[?(@.type==\"Converged\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProfileSpec {
    /// GPU model the curve was measured on, e.g. `H100-SXM`.
    pub gpu_model: String,
    /// Unit of `throughput`, e.g. `tokens/s`.
    pub throughput_unit: String,
    /// Sorted by `powerWatts`; every point has `smClockMHz` or none does.
    // NB: the upper bound keeps the CEL cost estimate of the rules below within the API server's budget.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.all(p, has(p.smClockMHz)) || self.all(p, !has(p.smClockMHz))").message("either every point has smClockMHz or none has"))]
    #[x_kube(validation = Rule::new("self.map(p, p.powerWatts).isSorted()").message("points must be sorted by powerWatts"))]
    pub points: Vec<WorkloadProfilePoint>,
    /// Pods this profile applies to, besides those naming it in `kilowatt.dev/profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The job this profile is for: the pods in its namespace whose job (`kilowatt.dev/job`, else
    /// their controller's name, else their own name) is this use it, unless they name a profile or a
    /// selector matches them. The operator sets it on the profiles it creates for jobs it learns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub job: Option<String>,
}

/// One measured point.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProfilePoint {
    #[schemars(range(min = 0.001))]
    pub power_watts: f64,
    #[serde(
        rename = "smClockMHz",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "profile_file::whole_number::option_u32"
    )]
    #[schemars(range(min = 1))]
    pub sm_clock_mhz: Option<u32>,
    #[schemars(range(min = 0.0))]
    pub throughput: f64,
}

/// Which pods use a profile, and what their work counters measured.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProfileStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
    /// One curve per workload planned on this profile whose pods' work counters reported windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measured: Vec<MeasuredCurve>,
    /// `Learning` (work windows arrive for some workload on this profile) and `Converged` (every such
    /// workload has measured points and no exploration sweep in progress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A workload's throughput curve as its pods' work counters measured it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredCurve {
    /// The solver workload (`namespace/job` for a job's pods, `namespace/pod` otherwise).
    pub workload: String,
    /// Windows that were points of the curve (requests waiting, or no waiting signal).
    pub windows_accepted: u64,
    /// Windows without waiting requests: lower bounds only.
    pub windows_lower_bound: u64,
    /// By power limit (bins of 5 W), then clock.
    pub points: Vec<MeasuredPoint>,
}

/// One bin of a measured curve.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredPoint {
    /// Mean of the windows' power limits.
    pub power_watts: f64,
    #[serde(
        rename = "smClockMHz",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sm_clock_mhz: Option<u32>,
    /// Mean work rate per GPU, in the work counter's unit per second.
    pub throughput: f64,
    /// Saturated windows averaged into `throughput`; the point is planned on from 3.
    pub windows: u32,
    /// Sample standard deviation of those windows' rates.
    pub spread: f64,
    /// The highest rate of a window without waiting requests (a lower bound), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_bound: Option<f64>,
    pub last_measured: Time,
}

/// The CRD manifests as YAML, with the file name each is committed under in `crds/`.
pub fn crd_manifests() -> Result<Vec<(&'static str, String)>, serde_saphyr::ser_error::Error> {
    Ok(vec![
        (
            "powerbudgets.yaml",
            serde_saphyr::to_string(&PowerBudget::crd())?,
        ),
        (
            "workloadprofiles.yaml",
            serde_saphyr::to_string(&WorkloadProfile::crd())?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_manifests_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, generated) in crd_manifests().expect("manifests serialise") {
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                committed == generated,
                "crds/{file} is stale: run `cargo run -p kilowatt-cli -- crdgen --out-dir crds`"
            );
        }
    }

    #[test]
    fn power_budget_is_cluster_scoped_and_profile_namespaced() {
        assert_eq!(PowerBudget::crd().spec.scope, "Cluster");
        assert_eq!(WorkloadProfile::crd().spec.scope, "Namespaced");
        assert_eq!(PowerBudget::crd().spec.group, "kilowatt.dev");
    }
}
