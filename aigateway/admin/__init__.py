"""What an admin sees and does: the admin HTTP API and its OpenAPI document and docs
pages, /health, key and user views, budget reports and invoices, usage exports."""
