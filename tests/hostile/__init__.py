"""Hostile cases against the pipeline, run as a new user would: `python -m tests.hostile`.

Five classes (writes, lineage, failures, reads, contract and config), most of them generated as
families (every stage against every kind of foreign output path, every stage input against every
way its record can fail to vouch for it), each run in a copy of one tiny world built once, in this
process through the same entry points a user calls. Each case ends in one outcome:

  clear        refused in one readable line, exit status non-zero, nothing lost
  handled      accepted, and the result checked right (a valid input, a recoverable state)
  unclear      refused, but in more than one line or a line too long to read, or a valid input refused
  silent wrong exit status 0 where a refusal was due, or an accepted result that is wrong
  traceback    an exception escaped the entry point
  data loss    a file or folder that was there before (a user's, a tracked one, an output) changed or vanished
  hang         no end within the case's time limit

The outcome table and each case that is not clear or handled are printed; docs/measurements/hostile.md
records a run.
"""
