"""Using a finished run: loading it, predict, explain, export, and the HTTP service with batch prediction."""
