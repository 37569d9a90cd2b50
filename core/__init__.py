"""core: Nudge's pure domain — campaign definitions, events, conditions, templates. No I/O."""
