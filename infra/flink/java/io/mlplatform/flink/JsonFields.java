package io.mlplatform.flink;

import java.io.IOException;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * MLP_JSON_FIELDS(line, name_1, ..., name_n): one parse of a JSON line for the preprocessing
 * job's checks, where Flink's JSON_VALUE / JSON_QUERY parse the line again for every call (about
 * 20 a row: the TaskManager's hottest code, measured).
 *
 * <p>NULL when the line is not one JSON object (nothing may follow it). Otherwise an array (SQL
 * indexes from 1): at 1 the number of distinct keys in the object; then for each name j (from
 * 0) at 2 + 2j the first character of its JSON value ('"' a string, '{' an object, '[' an array,
 * 't' / 'f' a boolean, 'n' null, a digit or '-' a number; NULL when the key is absent), and at
 * 3 + 2j its value as text (a string unquoted, a number as written, an object or array as JSON;
 * NULL for null). A repeated key counts once and keeps its last value. An array, not a map:
 * the checks look a column up about ten times a row, and an array's lookup is by position.
 */
public final class JsonFields extends ScalarFunction {

    public static final String NAME = "MLP_JSON_FIELDS";
    private static final ObjectMapper MAPPER = new ObjectMapper();

    /**
     * Not deterministic, for the planner only (the result depends on its arguments alone): it
     * merges a projection into the one above it only when that copies no deterministic call,
     * and a merged projection computes a call once per use. The checks use this array about
     * ten times per column, so a merge parsed every line ~250 times (measured in the plan).
     */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    public @DataTypeHint("ARRAY<STRING>") String[] eval(String line, String... names) {
        if (line == null) {
            return null;
        }
        try (JsonParser parser = MAPPER.getFactory().createParser(line)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            Map<String, Integer> slots = new HashMap<>();
            for (int j = 0; j < names.length; j++) {
                slots.putIfAbsent(names[j], j);
            }
            String[] out = new String[1 + 2 * names.length];
            Set<String> keys = new HashSet<>();
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.getCurrentName();
                keys.add(name);
                JsonToken value = parser.nextToken();
                Integer slot = slots.get(name);
                if (slot == null) {
                    parser.skipChildren(); // a key that is no column: counted, not kept
                    continue;
                }
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
                out[1 + 2 * slot] = kind;
                out[2 + 2 * slot] = text;
            }
            if (parser.currentToken() != JsonToken.END_OBJECT || parser.nextToken() != null) {
                return null;
            }
            out[0] = Integer.toString(keys.size());
            return out;
        } catch (IOException | RuntimeException e) {
            return null; // not JSON
        }
    }
}
