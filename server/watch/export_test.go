package watch

// HoldStream takes the lock a handed-over stream's own goroutine takes
// when it wakes (tests: a sender arriving meanwhile), and returns its
// release.
func HoldStream(s *Stream) (release func()) {
	s.d.mu.Lock()
	return s.d.mu.Unlock
}
