"""Getting models onto the device and changing them while serving: Roboflow pulls, pushed files and URLs,
the checks a new version passes before it serves, rollback and eviction."""
