"""A windowed mean: the mean of the numbers in each window, with the window's bounds.

Deploy with a window, e.g. `--window-length-duration-ms 10000` (tumbling 10 s windows by publish
time), `--window-length-count 100 --sliding-interval-count 10`, or event time with
`--window-timestamp event --max-lag-ms 2000`. `process` gets the window's records (each with
`.value`, `.timestamp_ms`, `.event_time_ms`, `.key`, `.properties`, `.message_id`, `.topic`) and
`context.window` (`.start`, `.end`: milliseconds for time windows, record indexes for count
windows). Pulsar's own Python runtime has no windowed functions; this runs on mlplatform's Ray
runtime. Output: "start,end,count,mean".
"""


class WindowedMean:
    def process(self, inputs, context):
        values = []
        for record in inputs:
            try:
                values.append(float(record.value))
            except ValueError:
                context.get_logger().warning("not a number: %r", record.value)
        if not values:
            return None
        context.record_metric("window_size", len(values))
        window = context.window
        return f"{window.start},{window.end},{len(values)},{sum(values) / len(values):.6g}"
