"""Supervisors' work on finished calls: the call list and search, QA marks on turns, and the KB-gap loop. Holds the
values and the query seam now; the pages and the gap report come with the review issue."""
