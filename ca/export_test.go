package ca

// RealSigns reports how many times c's real issuer key has signed.
func RealSigns(c *CA) int64 { return c.realSigns.Load() }
