"""Pure values and decisions. Imports no driver (no psycopg, aiokafka, faust, grpc)."""
