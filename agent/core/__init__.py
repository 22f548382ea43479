"""The core every layer speaks: the request record, errors, scenarios, arrival schedules, redaction, traces.

Nothing here imports the rest of infermeter; everything else may import it.
"""
