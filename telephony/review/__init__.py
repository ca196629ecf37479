"""Supervisors' work on finished calls: the review index and search, QA marks and the daily sample, privacy and the
audit log, the KB-gap loop, the dashboard and gap report, retention (docs/review.md)."""
