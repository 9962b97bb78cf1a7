from trim_fast.cli import main

raise SystemExit(main())
