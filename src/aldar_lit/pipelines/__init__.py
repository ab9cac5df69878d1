"""Storyboard generation: story -> scenes -> frames (baseline | simple | ref_guided) with QA and auto-fix."""
