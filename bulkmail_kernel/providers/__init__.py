"""Provider workflows above the outbox: SendPulse hand-overs and EuroSMS delivery reports."""
