"""Build dual-preference data and label it: `build pairs`, the annotation studio (store, web app), agreement, import/export."""
