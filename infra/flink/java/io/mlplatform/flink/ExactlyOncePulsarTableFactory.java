package io.mlplatform.flink;

import java.lang.reflect.Field;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.pulsar.table.PulsarTableFactory;
import org.apache.flink.connector.pulsar.table.sink.PulsarTableSink;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.sink.DynamicTableSink;

/**
 * The Flink Pulsar SQL connector ('pulsar') under the name 'pulsar-exactly-once', whose sinks
 * publish with {@link DeliveryGuarantee#EXACTLY_ONCE}: each checkpoint's messages in a Pulsar
 * transaction that the checkpoint's completion commits.
 *
 * <p>flink-connector-pulsar 4.1.0 builds every SQL sink with AT_LEAST_ONCE and overrides the
 * pulsar.sink.deliveryGuarantee option. This factory creates the sink exactly as the connector
 * does, then sets its guarantee; the field is private, so by reflection. Every other option,
 * and the source, are the connector's own.
 */
public final class ExactlyOncePulsarTableFactory extends PulsarTableFactory {

    public static final String IDENTIFIER = "pulsar-exactly-once";

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public DynamicTableSink createDynamicTableSink(Context context) {
        DynamicTableSink sink = super.createDynamicTableSink(context);
        try {
            Field guarantee = PulsarTableSink.class.getDeclaredField("deliveryGuarantee");
            guarantee.setAccessible(true);
            guarantee.set(sink, DeliveryGuarantee.EXACTLY_ONCE);
        } catch (ReflectiveOperationException | ClassCastException e) {
            throw new ValidationException(
                    "connector '" + IDENTIFIER + "' could not set the delivery guarantee of "
                            + sink.getClass().getName()
                            + ": it is written for flink-connector-pulsar 4.1.0's PulsarTableSink",
                    e);
        }
        return sink;
    }
}
