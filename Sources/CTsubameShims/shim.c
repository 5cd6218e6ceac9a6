// Empty: the shims are static inline functions in the header.
