"""What every process stands on (config, logs, metrics, httpd) and the supervisor that runs them."""
