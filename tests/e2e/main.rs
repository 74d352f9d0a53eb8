mod testbed_smoke;
mod deploy;
