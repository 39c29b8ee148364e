"""The MQTT link to the store: payload contract, outbox, commands, store-wide gallery sync."""
