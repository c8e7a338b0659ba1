;; Hostile guest (core module; build.sh wraps it into a tandem:rules@0.2.0
;; component): its allocator answers every request with a pointer past the
;; end of its memory, so the host cannot pass it any input. The host must
;; refuse the pointer (a trap), never write through it.
(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (i32.const 0xfffffff0))
  (func (export "tandem:rules/rule@0.2.0#check") (param i32) (result i32)
    unreachable)
  (func (export "tandem:rules/rule@0.2.0#check-batch")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    unreachable))
