mod controller;
mod apply;
mod deploy;
mod plan;
mod status_page;
mod testbed_smoke;
mod transport;
