"""HTTP routers, one module per endpoint family: wire types at the top, thin handlers below."""
