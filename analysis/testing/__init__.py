"""Models with known ground truth for tests: the planted-model zoo (:mod:`.planted`)."""
