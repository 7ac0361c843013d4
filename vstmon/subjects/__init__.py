"""Subjects: the people in view of a stream (person detector; tracker and subject policy beside it)."""
