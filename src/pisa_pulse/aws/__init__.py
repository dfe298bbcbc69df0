"""The cloud form: `serve` (or a batch run) publishes the aggregates to a DynamoDB table
(`table.py`, `publish.py`), and a Lambda function behind API Gateway answers the charts from it
(`handler.py`), with the same bodies and ETags as `serve`, however many dashboards poll."""
