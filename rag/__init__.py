"""Retrieval and answers: retrievers, confidence gates, answer composers, calculators, evaluation."""
