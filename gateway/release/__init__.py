"""What leaves with an answer and what stays behind: receipts, the audit log, metering, metrics, logs."""
