//! Signals from outside that steer a budget's efficiency policy over time: carbon-intensity
//! forecasts in the WattTime v3 and Electricity Maps v3 formats ([`forecast`], pure), the band
//! policy and its fallback ([`policy`], pure, time passed in) and the poller that fetches them
//! ([`poller`], network IO); OpenADR 3.1 programs, whose events become cap windows and slowdowns
//! ([`openadr`], pure) and which the operator follows as a VEN ([`vtn`], network IO). A forecast only
//! ever raises the `maxSlowdown` a budget is planned with, which lowers GPU power; an OpenADR event
//! can lower a cap, and only the VTN ending it raises it again, never losing contact.

pub mod forecast;
pub mod openadr;
pub mod policy;
pub mod poller;
pub mod vtn;

pub use forecast::{Forecast, ForecastError};
pub use policy::{Availability, ForecastPolicy, SignalReading, SourceState, apply};
pub use poller::{ForecastBoard, Poller};
