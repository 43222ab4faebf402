"""The road from checks to alerts.

Three checks read the store and each produces a typed `Finding`: a probe run against its
baseline run (`probes`), a stream window's violation rates against the hours before it
(`stream`), and a traffic window's embeddings against their reference (`drift`). Each check
applies its own statistics (a test, a correction across categories or methods, a minimum
effect) and names what crossed the line. One decision (`alerts.decide`) then turns any
finding into an alert or none: cooldown, follow-ups threaded under the first message, and
recovery when a condition clears.
"""
