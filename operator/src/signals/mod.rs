//! Signals from outside that steer a budget's efficiency policy over time: carbon-intensity
//! forecasts in the WattTime v3 and Electricity Maps v3 formats ([`forecast`], pure), the band
//! policy and its fallback ([`policy`], pure, time passed in) and the poller that fetches them
//! ([`poller`], network IO). A signal only ever raises the `maxSlowdown` a budget is planned with,
//! which lowers GPU power; it never raises a cap.

pub mod forecast;
pub mod policy;
pub mod poller;

pub use forecast::{Forecast, ForecastError};
pub use policy::{Availability, ForecastPolicy, SignalReading, SourceState, apply};
pub use poller::{ForecastBoard, Poller};
