package registry

// VerifiedLen is how many digests the registry keeps (one a loaded
// licence).
func VerifiedLen(r *Registry) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.verified)
}
