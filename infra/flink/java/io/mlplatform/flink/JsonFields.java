package io.mlplatform.flink;

import java.io.IOException;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * MLP_JSON_FIELDS(line): one parse of a JSON line for the preprocessing job's checks, where
 * Flink's JSON_VALUE / JSON_QUERY parse the line again for every call (about 20 a row: the
 * TaskManager's hottest code, measured).
 *
 * <p>NULL when the line is not one JSON object (nothing may follow it). Otherwise a map with,
 * per key: "k:name", the first character of its JSON value ('"' a string, '{' an object, '['
 * an array, 't' / 'f' a boolean, 'n' null, a digit or '-' a number), and "v:name", its value as
 * text (a string unquoted, a number as written, an object or array as JSON; absent for null);
 * and "#", the number of distinct keys. A repeated key counts once and keeps its last value.
 */
public final class JsonFields extends ScalarFunction {

    public static final String NAME = "MLP_JSON_FIELDS";
    private static final ObjectMapper MAPPER = new ObjectMapper();

    public @DataTypeHint("MAP<STRING, STRING>") Map<String, String> eval(String line) {
        if (line == null) {
            return null;
        }
        try (JsonParser parser = MAPPER.getFactory().createParser(line)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            Map<String, String> fields = new HashMap<>();
            int keys = 0;
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.getCurrentName();
                JsonToken value = parser.nextToken();
                String kind;
                String text;
                switch (value) {
                    case START_OBJECT:
                    case START_ARRAY:
                        kind = value == JsonToken.START_OBJECT ? "{" : "[";
                        text = MAPPER.readTree(parser).toString(); // the whole value
                        break;
                    case VALUE_STRING:
                        kind = "\"";
                        text = parser.getText();
                        break;
                    case VALUE_NULL:
                        kind = "n";
                        text = null;
                        break;
                    case VALUE_TRUE:
                        kind = "t";
                        text = "true";
                        break;
                    case VALUE_FALSE:
                        kind = "f";
                        text = "false";
                        break;
                    default: // a number, as written
                        text = parser.getText();
                        kind = text.substring(0, 1);
                }
                if (fields.put("k:" + name, kind) == null) {
                    keys++;
                }
                if (text == null) {
                    fields.remove("v:" + name);
                } else {
                    fields.put("v:" + name, text);
                }
            }
            if (parser.currentToken() != JsonToken.END_OBJECT || parser.nextToken() != null) {
                return null;
            }
            fields.put("#", Integer.toString(keys));
            return fields;
        } catch (IOException | RuntimeException e) {
            return null; // not JSON
        }
    }
}
