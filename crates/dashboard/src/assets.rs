//! The dashboard's only assets, compiled into the binary: no CDN, no build step.

pub const CSS: &str = include_str!("../assets/dashboard.css");
pub const JS: &str = include_str!("../assets/dashboard.js");
