mod testbed_smoke;
